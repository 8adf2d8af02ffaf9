"""Training throughput of the train stage's recipe on this CPU: variants side by side.

On the default data and model (the rows the train stage selects from data/pairs/train.parquet
with params.yaml's train section, models/base, its saved prompt, MNRL, AdamW, frozen word
embeddings), each variant trains ``--steps`` timed steps (after ``--warmup``) from the same
weights and the same batches, tokenisation included:

- ``fp32``: the default before this benchmark (random batches, ``train.max_seq_length``, torch's threads);
- ``bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)``, what the Trainer's ``bf16=True``
  does on CPU (accelerate's autocast; weights and optimizer state stay fp32);
- ``+len``: batches grouped by token length (chunks of 64 batches sorted by length, batch
  order shuffled), so little is padding (the train stage's ``train.group_by_length``);
- ``+seq``: ``max_seq_length`` = the 99.9th percentile of the training texts' token
  lengths, rounded up to 8, instead of the fixed value;
- ``1thread``: one intra-op thread (how much the second core adds);
- ``compile`` (``--compile``): ``torch.compile`` of the transformer (inductor, dynamic shapes),
  for the fp32 default and for bf16 + length grouping; the compilation happens in the
  untimed warm-up steps (raise ``--warmup`` if a new batch shape still recompiles).

For each it prints pairs/s, the ratio to ``fp32``, the share of pad tokens, the achieved
GFLOP/s (matrix-multiply FLOPs of the tokens computed, pad included:
``hpo_embed.hardware.encoder_flops``) and its share of the CPU's peak for that precision
and of the fp32 peak (``hpo_embed.hardware.peak_flops``: FLOP/cycle/core table x clock x
threads). ``--parity`` then runs the real train stage (``python -m stages.train``) once per
``--stage`` override set (default: fp32 without length grouping, i.e. the former default;
fp32; bf16) at the default steps and seed: pairs/s, ratio and dev MRR against the first.
Run it alone: a second CPU-heavy job on 2 cores changes every number.

    .venv/bin/python benchmarks/bench_train.py [--steps 24] [--parity [--stage precision=bf16 ...]] [--compile]
        [--only "fp32 compile,bf16+len+seq"] [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpo_embed.hardware import TokenCounter, cpu_info, native_bf16, peak_flops  # noqa: E402
from hpo_embed.negatives.anchors import select_training_rows  # noqa: E402
from hpo_embed.params import load_params  # noqa: E402
from hpo_embed.schemas import read_table  # noqa: E402
from hpo_embed.training.losses import load_model  # noqa: E402
from hpo_embed.training.precision import autocast  # noqa: E402
from hpo_embed.models.loader import freeze_word_embeddings  # noqa: E402


def batches(n: int, batch_size: int, seed: int, lengths: np.ndarray | None) -> list[np.ndarray]:
    """Random batches of row indices; with ``lengths``: grouped by length (chunks of 64
    batches sorted by length, then the batch order shuffled)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    if lengths is not None:
        chunk = 64 * batch_size
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in np.array_split(
            order, max(1, -(-n // chunk)))])
    out = [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    if lengths is not None:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


def token_lengths(tokenizer, texts: list[str]) -> np.ndarray:
    return np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]])


def run_variant(base, anchors, positives, plan, *, precision: str, max_len: int, threads: int,
                compile_: bool, warmup: int, lr: float) -> dict:
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.set_num_threads(threads)
    model = copy.deepcopy(base)
    model.max_seq_length = max_len
    freeze_word_embeddings(model)
    if compile_:
        model[0].auto_model = torch.compile(model[0].auto_model, dynamic=True)
    loss = MultipleNegativesRankingLoss(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    tokens = TokenCounter().attach(model[0])   # what the train stage counts for its peak share
    useful = 0
    t0 = None
    for i, idx in enumerate(plan):
        if i == warmup:
            t0, useful = time.perf_counter(), 0
            tokens.reset()
        feats = [model.tokenize([anchors[j] for j in idx]), model.tokenize([positives[j] for j in idx])]
        useful += sum(int(f["attention_mask"].sum()) for f in feats)
        with autocast(precision):
            value = loss(feats, None)
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    steps = len(plan) - warmup
    flops = tokens.flops(model[0].auto_model.config)
    return {"pairs_per_s": steps * len(plan[0]) / seconds, "seconds": seconds, "steps": steps,
            "pad_share": 1 - useful / tokens.tokens, "gflops": flops / seconds / 1e9,
            "peak_share": flops / seconds / peak_flops(precision, threads),
            "fp32_peak_share": flops / seconds / peak_flops("fp32", threads)}


DEFAULT_STAGE_RUNS = ["precision=fp32,group_by_length=false", "precision=fp32", "precision=bf16"]


def stage_runs(params_path: Path, work: Path, runs: list[str]) -> dict:
    """The real train stage (``python -m stages.train``) once per entry of ``runs``
    (``train.KEY=VALUE,...`` overrides of params.yaml), at the default steps and seed:
    pairs/s, train time and best dev MRR, each against the first run."""
    out = {}
    for spec in runs:
        raw = yaml.safe_load(params_path.read_text())
        for item in spec.split(","):
            key, _, value = item.partition("=")
            raw["train"][key.strip()] = yaml.safe_load(value)
        d = work / f"run{len(out)}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "params.yaml").write_text(yaml.safe_dump(raw))
        cmd = [sys.executable, "-m", "stages.train", "--params", str(d / "params.yaml"), "--pairs", "data/pairs",
               "--terms", "data/hpo/terms.parquet", "--edges", "data/hpo/edges.parquet", "--negatives", "data/negatives",
               "--hpo-metrics", "metrics/hpo.json", "--base", "models/base", "--out", str(d / "finetuned"),
               "--checkpoints", str(d / "checkpoints"), "--metrics", str(d / "train.json"),
               "--report", str(d / "report.json"), "--live", str(d / "dvclive")]
        subprocess.run(cmd, cwd=ROOT, check=True)
        m = json.loads((d / "report.json").read_text())
        r = {k: m[k] for k in ("precision", "pairs_per_s", "train_time_s", "steps", "best_step", "peak_share")}
        r["dev_mrr_best"] = m["best"]["mrr"]
        first = next(iter(out.values()), r)
        r["ratio"] = round(r["pairs_per_s"] / first["pairs_per_s"], 3)
        r["dev_mrr_delta"] = round(r["dev_mrr_best"] - first["dev_mrr_best"], 6)
        out[spec] = r
        print(f"train stage {spec:42s} {r['pairs_per_s']:6.2f} pairs/s x{r['ratio']:.2f}  dev MRR "
              f"{r['dev_mrr_best']:.4f} ({r['dev_mrr_delta']:+.4f})  peak share {r['peak_share']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=24, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    ap.add_argument("--parity", action="store_true",
                    help=f"also run the train stage per --stage (default: {'; '.join(DEFAULT_STAGE_RUNS)})")
    ap.add_argument("--stage", action="append", default=[], help="train.KEY=VALUE,... overrides of one train-stage run")
    ap.add_argument("--only", help="comma-separated variant names to run (fp32 always runs first: the ratios' base)")
    ap.add_argument("--json", type=Path, help="write the results here too")
    a = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    p = params.train
    rows, _ = select_training_rows(read_table(ROOT / "data/pairs/train.parquet", "pairs"), p.pair_types,
                                   p.max_train_pairs, p.seed)
    base = load_model(str(ROOT / "models/base"), "train.base_model", device="cpu")
    prompt = base.prompts.get(base.default_prompt_name, "") if base.default_prompt_name else ""
    anchors = [prompt + t for t in rows["anchor"]]
    positives = [prompt + t for t in rows["positive"]]
    lens = np.maximum(token_lengths(base.tokenizer, anchors), token_lengths(base.tokenizer, positives))
    derived = int(-(-np.percentile(np.concatenate([token_lengths(base.tokenizer, anchors),
                                                   token_lengths(base.tokenizer, positives)]), 99.9) // 8) * 8)
    n = (a.warmup + a.steps) * p.batch_size
    plan_random = batches(len(rows), p.batch_size, p.seed, None)[: a.warmup + a.steps]
    plan_len = batches(len(rows), p.batch_size, p.seed, lens)[: a.warmup + a.steps]
    threads = torch.get_num_threads()
    info = cpu_info()
    print(f"CPU: {info.model} ({info.vendor}, {info.kind[1]}, native bf16: {native_bf16(info)}, "
          f"{info.mhz:.0f} MHz, {info.cores} cores); torch {torch.__version__}, {threads} threads; "
          f"{len(rows)} rows, {n} pairs per variant; max_seq_length {p.max_seq_length}, derived {derived}")
    print(f"peak: fp32 {peak_flops('fp32', threads) / 1e9:.0f} GFLOP/s, bf16 {peak_flops('bf16', threads) / 1e9:.0f} "
          f"GFLOP/s (FLOP/cycle/core x clock x threads; hpo_embed/hardware.py)")
    variants = [("fp32", "fp32", plan_random, p.max_seq_length, threads, False),
                ("bf16", "bf16", plan_random, p.max_seq_length, threads, False),
                ("fp32+len", "fp32", plan_len, p.max_seq_length, threads, False),
                ("fp32+seq", "fp32", plan_random, derived, threads, False),
                ("bf16+len+seq", "bf16", plan_len, derived, threads, False),
                ("fp32 1thread", "fp32", plan_random, p.max_seq_length, 1, False)]
    if a.compile:
        variants += [("fp32 compile", "fp32", plan_random, p.max_seq_length, threads, True),
                     ("bf16+len compile", "bf16", plan_len, p.max_seq_length, threads, True)]
    if a.only:
        wanted = {"fp32", *(v.strip() for v in a.only.split(","))}
        unknown = wanted - {v[0] for v in variants}
        if unknown:
            ap.error(f"--only: unknown variant(s) {', '.join(sorted(unknown))} (add --compile for the compiled ones)")
        variants = [v for v in variants if v[0] in wanted]
    results = {}
    for name, precision, plan, max_len, th, comp in variants:
        r = run_variant(base, anchors, positives, plan, precision=precision, max_len=max_len, threads=th,
                        compile_=comp, warmup=a.warmup, lr=params.lr)
        r["ratio"] = r["pairs_per_s"] / results["fp32"]["pairs_per_s"] if results else 1.0
        results[name] = r
        print(f"{name:18s} {r['pairs_per_s']:7.1f} pairs/s  x{r['ratio']:.2f}  pad {r['pad_share']:.0%}  "
              f"{r['gflops']:6.1f} GFLOP/s  {r['peak_share']:.1%} of {precision} peak  "
              f"({r['fp32_peak_share']:.1%} of fp32 peak)", flush=True)
    torch.set_num_threads(threads)
    out = {"cpu": {"model": info.model, "vendor": info.vendor, "kind": info.kind[1], "mhz": info.mhz,
                   "native_bf16": native_bf16(info)}, "threads": threads, "derived_max_seq_length": derived,
           "variants": results}
    if a.parity:
        with tempfile.TemporaryDirectory(prefix="bench_train_") as work:
            out["stage_runs"] = stage_runs(ROOT / "params.yaml", Path(work), a.stage or DEFAULT_STAGE_RUNS)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
