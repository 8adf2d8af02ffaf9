"""GPU check: a few training steps of the gpu profile on a shape twin (``make gpu-check``).

The twin is the configured base model's architecture with random weights
(``AutoModel.from_config`` from configs/shapes/ or the model folder's config.json: no
download), trained with the profile's exact loss (hpo_embed.training.losses.build_loss), precision
(bf16 only where the GPU has it natively), batch, mini-batch and sequence length, every
text padded to ``train.max_seq_length`` (the worst case). It reports the peak CUDA memory
next to the estimate of hpo_embed.gpu.estimate, steps/s, tokens/s and the time per epoch.

Without a usable CUDA device it skips with the reason (exit 0). ``--tiny`` scales the
model and batch down so that the same code path runs on CPU in seconds (the test suite).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from hpo_embed.common import ROOT, UserError, run_stage, write_json
from hpo_embed.gpu.estimate import Shape, estimate_memory, load_with_profile, model_config, texts_per_example
from hpo_embed.gpu.preflight import cuda_problem, lower_hint
from hpo_embed.training.losses import build_loss, set_precision
from hpo_embed.training.train import pick_precision

log = logging.getLogger("hpo_embed.gpu_check")

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 256,
        "vocab_size": 1000}


def twin_model(config: dict, device: str):
    """A SentenceTransformer (mean pooling + normalisation) around random encoder weights."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from transformers import AutoConfig, AutoModel

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **{k: v for k, v in cfg.items() if not k.startswith("_")})

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.auto_model = AutoModel.from_config(hf_config)

        def forward(self, features: dict) -> dict:
            out = self.auto_model(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
            features["token_embeddings"] = out.last_hidden_state
            return features

        def gradient_checkpointing_enable(self, kwargs=None):
            self.auto_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

        def get_embedding_dimension(self) -> int:
            return hf_config.hidden_size

    torch.manual_seed(0)
    twin = Twin()
    model = SentenceTransformer(modules=[twin, Pooling(hf_config.hidden_size, "mean"), Normalize()], device=device)
    return model, hf_config


def run(params, steps: int = 5, tiny: bool = False, device: str | None = None) -> dict:
    import torch


    p = params.train
    problem = cuda_problem()
    if device is None:
        device = "cpu" if tiny and problem else "cuda"
    if device == "cuda" and problem:
        return {"skipped": f"no CUDA device: {problem}"}
    config = model_config(p.base_model, getattr(p, "base_revision", None))
    batch, mini, seq_len = p.batch_size, p.mini_batch_size, p.max_seq_length
    if tiny:
        config = {**config, **TINY}
        batch, mini, seq_len = min(batch, 8), min(mini, 4), min(seq_len, 32)
    config["max_position_embeddings"] = max(int(config.get("max_position_embeddings", 0)), seq_len + 4)
    p = p.model_copy(update=dict(batch_size=batch, mini_batch_size=mini, max_seq_length=seq_len, device=device))
    precision = pick_precision(p.precision, device)
    model, hf_config = twin_model(config, device)
    if p.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    loss = build_loss(model, p)
    set_precision(loss, precision)
    texts = texts_per_example(p)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, fused=device == "cuda")
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    gen = torch.Generator().manual_seed(0)

    def features():
        ids = torch.randint(5, hf_config.vocab_size, (batch, seq_len), generator=gen)
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}

    def step():
        feats = [features() for _ in range(texts)]
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            value = loss(feats, None)
        scaler.scale(value).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return float(value.detach())

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    try:
        step()  # warm-up: allocator, kernels, optimizer states
        sync()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        losses = [step() for _ in range(steps)]
        sync()
        seconds = time.perf_counter() - t0
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"CUDA out of memory in gpu-check: {lower_hint(p)}") from None
    est = estimate_memory(Shape.from_config(config), loss=p.loss, batch_size=batch, seq_len=seq_len,
                          precision=precision, mini_batch_size=mini, texts_per_example=texts,
                          gradient_checkpointing=p.gradient_checkpointing,
                          attention="efficient" if device == "cuda" else "math")
    tokens = steps * batch * texts * seq_len
    out = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
           "cuda": torch.version.cuda, "model_params_m": round(Shape.from_config(config).params() / 1e6, 1),
           "tiny": tiny, "loss": p.loss, "precision": precision, "batch_size": batch,
           "mini_batch_size": mini if p.loss == "cached_mnrl" else None, "max_seq_length": seq_len,
           "gradient_checkpointing": p.gradient_checkpointing, "steps": steps,
           "steps_per_s": round(steps / seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
           "estimated_peak_gib": round(est.peak_gib, 2), "loss_values": [round(v, 4) for v in losses]}
    if device == "cuda":
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2 ** 30, 2)
        out["card_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m hpo_embed.gpu.check", description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--profile", default="gpu", help="profile applied over --params ('none': params as they are)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    ap.add_argument("--tiny", action="store_true", help="scaled-down twin and batch (runs on CPU without a GPU)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    a = ap.parse_args(argv)
    if a.steps < 1:
        raise UserError("--steps must be >= 1")
    params = load_with_profile(a.params, None if a.profile == "none" else a.profile)
    out = run(params, steps=a.steps, tiny=a.tiny)
    if "skipped" in out:
        print(f"gpu-check skipped: {out['skipped']}")
    else:
        mem = (f"peak {out['peak_allocated_gib']} GiB allocated / {out['peak_reserved_gib']} GiB reserved "
               f"of {out['card_gib']} GiB (estimate {out['estimated_peak_gib']} GiB)"
               if "peak_allocated_gib" in out else f"peak memory not measured on CPU (estimate "
               f"{out['estimated_peak_gib']} GiB)")
        print(f"gpu-check on {out['device']}: {out['model_params_m']}M-parameter twin, {out['loss']} "
              f"{out['precision']}, batch {out['batch_size']}"
              + (f", mini-batch {out['mini_batch_size']}" if out["mini_batch_size"] else "")
              + f", {out['max_seq_length']} tokens: {out['steps_per_s']} steps/s, {out['tokens_per_s']:,.0f} tokens/s; {mem}")
    if a.json:
        write_json(a.json, out)
    log.debug("%s", json.dumps(out))


if __name__ == "__main__":
    run_stage(main)
