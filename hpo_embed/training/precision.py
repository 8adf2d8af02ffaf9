"""``train.precision: auto`` on CPU: bf16 where this CPU has native bf16 *and* a short
measurement says it pays, else fp32.

The check (seconds, once per run; the decision is stored next to the checkpoints under
the run's fingerprint, so a resumed run keeps it):

1. detection: native bf16 (AMX tiles or AVX-512 BF16; ``hpo_embed.hardware.native_bf16``),
   else fp32 without measuring;
2. speed: the loss's forward + backward on the first training batches, fp32 and bf16
   autocast interleaved (no optimizer step: the weights do not change); bf16 must be at
   least ``MIN_SPEEDUP`` times faster;
3. parity: the dev MRR of the untrained model encoded under bf16 autocast against fp32
   (the baseline evaluation); bf16 must lose at most ``MAX_MRR_DROP``.

GPUs keep their rule (bf16 where native, else fp16: ``hpo_embed.training.train.pick_precision``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from hpo_embed.common import write_json
from hpo_embed.hardware import cpu_info, native_bf16

log = logging.getLogger("hpo_embed.train")

MIN_SPEEDUP = 1.10     # bf16 steps/s over fp32 steps/s
MAX_MRR_DROP = 0.005   # dev MRR fp32 - bf16 (untrained model)
CHECK_STEPS = 3        # timed forward+backward steps per precision and round (2 rounds, 1 warm-up each)
DECISION_FILE = "precision.json"


def autocast(precision: str):
    """The CPU autocast context of ``precision`` (a no-op for fp32)."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def _batch_features(model, dataset, batch_size: int, prompt: str | None, start: int):
    rows = dataset[start:start + batch_size]
    columns = [c for c in dataset.column_names if c != "label"]
    feats = [model.tokenize([(prompt or "") + t for t in rows[c]]) for c in columns]
    labels = torch.tensor(rows["label"]) if "label" in rows else None
    return feats, labels


def step_seconds(model, loss, dataset, batch_size: int, prompt: str | None) -> dict[str, float]:
    """Median seconds of one forward + backward step per precision, interleaved."""
    model.train()
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    n_batches = max(1, min(CHECK_STEPS + 1, len(dataset) // batch_size))
    for _round in range(2):
        for precision in times:
            for k in range(CHECK_STEPS + 1):
                feats, labels = _batch_features(model, dataset, batch_size, prompt, (k % n_batches) * batch_size)
                t0 = time.perf_counter()
                with autocast(precision):
                    value = loss(feats, labels)
                value.backward()
                model.zero_grad(set_to_none=True)
                if k:   # the first step of each block warms the kernels up
                    times[precision].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def decide(run_dir: Path, fp: str, model, loss, dataset, batch_size: int, prompt: str | None,
           fp32_dev_mrr: Callable[[], float], dev_mrr: Callable[[], float]) -> tuple[str, dict[str, Any]]:
    """(precision, why) for ``train.precision: auto`` on CPU. ``fp32_dev_mrr()`` is the
    baseline evaluation (fp32); ``dev_mrr()`` evaluates the current model (called under
    bf16 autocast here)."""
    stored = run_dir / DECISION_FILE
    if stored.is_file():
        prev = json.loads(stored.read_text())
        if prev.get("fingerprint") == fp:
            log.info("precision: %s (decided earlier in this run: %s)", prev["precision"], prev["info"]["reason"])
            return prev["precision"], prev["info"]
    cpu = cpu_info()
    info: dict[str, Any] = {"cpu": cpu.model, "native_bf16": native_bf16(cpu),
                            "min_speedup": MIN_SPEEDUP, "max_mrr_drop": MAX_MRR_DROP}
    if not info["native_bf16"]:
        precision, info["reason"] = "fp32", "no native bf16 on this CPU (neither amx_bf16 nor avx512_bf16)"
    else:
        t = step_seconds(model, loss, dataset, batch_size, prompt)
        info["step_s"] = {k: round(v, 4) for k, v in t.items()}
        info["speedup"] = round(t["fp32"] / t["bf16"], 3)
        mrr32 = fp32_dev_mrr()
        model.eval()
        with autocast("bf16"):
            mrr16 = dev_mrr()
        info["dev_mrr"] = {"fp32": round(mrr32, 6), "bf16": round(mrr16, 6)}
        ok_speed, ok_mrr = info["speedup"] >= MIN_SPEEDUP, mrr32 - mrr16 <= MAX_MRR_DROP
        precision = "bf16" if ok_speed and ok_mrr else "fp32"
        info["reason"] = (f"bf16 {info['speedup']}x fp32 per step (needs >= {MIN_SPEEDUP}), dev MRR "
                          f"{mrr16:.4f} vs {mrr32:.4f} fp32 (may drop <= {MAX_MRR_DROP})")
    log.info("precision: %s (%s)", precision, info["reason"])
    write_json(stored, {"fingerprint": fp, "precision": precision, "info": info})
    return precision, info
