"""What this CPU can do, and how much of it a run used.

``cpu_info`` reads ``/proc/cpuinfo`` (vendor, model, the ISA flags that matter here);
``native_bf16`` says whether bf16 arithmetic is native (AMX tiles or AVX-512 BF16 dot
products) rather than emulated; ``peak_flops`` is the theoretical peak of the cores a run
uses, from a per-core FLOP/cycle table (below) and the clock; ``encoder_flops`` counts
the matrix-multiply FLOPs of a BERT-style encoder over the tokens it really computed (pad
tokens included). Together they give the *share of peak* that the train stage and
``benchmarks/bench_train.py`` report. A choice of kernel or precision is never made
from this table alone: the callers measure (see ``hpo_embed.training.precision``).
"""
from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# FLOPs per cycle per core of the widest unit for each precision (multiply + add = 2).
# Intel Xeon with AVX-512: two 512-bit FMA ports (2 x 16 fp32 x 2); AVX512_BF16 dot
# products double that; AMX TMUL: 1024 bf16 FLOPs/cycle. AMD Zen 4 executes AVX-512 on two
# 256-bit FMA pipes (2 x 8 x 2), BF16 dot products doubling it. AVX2-only cores: two
# 256-bit FMA ports.
FLOPS_PER_CYCLE = {
    ("intel", "amx"): {"fp32": 64, "bf16": 1024},
    ("intel", "avx512"): {"fp32": 64, "bf16": 128},
    ("amd", "avx512"): {"fp32": 32, "bf16": 64},
    ("any", "avx2"): {"fp32": 32, "bf16": 32},
}


@dataclass(frozen=True)
class CpuInfo:
    vendor: str          # intel | amd | other
    model: str
    flags: frozenset[str]
    mhz: float           # the highest clock /proc/cpuinfo or cpufreq reports
    cores: int           # usable by this process

    @property
    def kind(self) -> tuple[str, str]:
        if "amx_bf16" in self.flags:
            return ("intel", "amx")
        if "avx512f" in self.flags:
            return ("amd" if self.vendor == "amd" else "intel", "avx512")
        return ("any", "avx2")


@functools.cache
def cpu_info(cpuinfo: str | None = None) -> CpuInfo:
    """This machine's CPU (``cpuinfo``: the text of /proc/cpuinfo, for tests)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(fields.get("vendor_id", ""), "other")
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, flags=re.M)]
    max_khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        mhz.append(int(max_khz.read_text()) / 1000)
    except (OSError, ValueError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuInfo(vendor, fields.get("model name", "unknown"), frozenset(fields.get("flags", "").split()),
                   max(mhz, default=0.0), cores)


def native_bf16(info: CpuInfo | None = None) -> bool:
    """bf16 matrix products run natively (AMX or AVX-512 BF16), not emulated in fp32."""
    flags = (info or cpu_info()).flags
    return "amx_bf16" in flags or "avx512_bf16" in flags


def peak_flops(precision: str, threads: int, info: CpuInfo | None = None) -> float:
    """Theoretical FLOP/s of ``threads`` cores in ``precision`` (fp32 | bf16)."""
    info = info or cpu_info()
    per_cycle = FLOPS_PER_CYCLE[info.kind]["bf16" if precision == "bf16" and native_bf16(info) else "fp32"]
    return per_cycle * info.mhz * 1e6 * min(threads, info.cores)


def encoder_flops(config, tokens: int, seq_len: float, train: bool = True) -> float:
    """Matrix-multiply FLOPs of a BERT-style encoder (``config``: a transformers config)
    over ``tokens`` computed tokens in sequences of mean length ``seq_len``: per token and
    layer 2 x (4 d^2 + 2 d f) for the projections and the feed-forward, 4 s d for the
    attention scores and their weighted sum; training = 3 x forward (the backward pass
    costs about twice the forward one)."""
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    forward = tokens * layers * (2 * (4 * d * d + 2 * d * f) + 4 * seq_len * d)
    return forward * (3 if train else 1)


class TokenCounter:
    """Counts the tokens a module computes while training (pad included): a forward
    pre-hook on a sentence-transformers ``Transformer`` module, whose input is the
    tokenizer's features (a dict from the collator, a ``BatchEncoding`` from ``tokenize``).
    ``tokens`` are computed with gradients (forward + backward); ``forward_only`` without
    (the gradient cache's first pass, ``cached_mnrl``), which costs one forward."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens = 0
        self.forward_only = 0
        self.sequences = 0
        self.length_sum = 0

    def __call__(self, module, args) -> None:
        if not module.training or not args or not isinstance(args[0], Mapping) or "attention_mask" not in args[0]:
            return
        import torch   # only ever called from inside a forward pass; this module stays torch-free
        mask = args[0]["attention_mask"]
        if torch.is_grad_enabled():
            self.tokens += int(mask.numel())
        else:
            self.forward_only += int(mask.numel())
        self.sequences += int(mask.shape[0])
        self.length_sum += int(mask.shape[0]) * int(mask.shape[1])

    def flops(self, config) -> float:
        """Matrix-multiply FLOPs of the counted tokens: 3 x forward with gradients, 1 x without."""
        return (encoder_flops(config, self.tokens, self.mean_length)
                + encoder_flops(config, self.forward_only, self.mean_length, train=False))

    @property
    def mean_length(self) -> float:
        return self.length_sum / self.sequences if self.sequences else 0.0

    def attach(self, module) -> "TokenCounter":
        module.register_forward_pre_hook(self)
        return self
