"""Time the benchmark stage at full corpus scale on this machine.

    .venv/bin/python benchmarks/bench_benchmark.py [--work DIR] [--frac 0.1] [--threads N]
        [--corpus-format label|label_synonyms|label_synonyms_definition] [--sample-docs N]

Builds stand-in inputs of the contracted schemas in ``--work`` (default: a temp folder):
the real HPO parsed by parse_hpo (~18.4k selected concepts), a random ``--frac`` of them
as test concepts with English-synonym and (synthetic) German-label queries, the base
model all-MiniLM-L6-v2 as "base", a copy of it as "finetuned" and its ONNX dynamic-int8
export as "int8". Then runs ``stages.benchmark.run`` twice: cold (everything encoded)
and warm (embeddings from the cache) and prints the wall times. Nothing here is a test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_inputs(work: Path, frac: float) -> None:
    import numpy as np
    import pandas as pd

    from hpo_embed.params import HpoParams
    from stages.parse_hpo import run as parse_hpo

    if not (work / "hpo" / "terms.parquet").is_file():
        parse_hpo(HpoParams(), out_dir=work / "hpo", metrics_path=work / "hpo" / "hpo.json")
    terms = pd.read_parquet(work / "hpo" / "terms.parquet")
    sel = terms[terms["selected"]].sort_values("id").reset_index(drop=True)
    split = np.where(np.random.default_rng(0).random(len(sel)) < frac, "test", "train")
    (work / "pairs").mkdir(exist_ok=True)
    pd.DataFrame({"hpo_id": sel["id"], "split": split, "branch": sel["branch"]}).to_parquet(
        work / "pairs" / "concepts.parquet")
    rows = []
    for r, s in zip(sel.to_dict("records"), split):
        if s != "test":
            continue
        for syn in r["synonyms"]:
            rows.append(dict(text=syn["text"], hpo_id=r["id"], lang="en", kind="synonym",
                             synonym_type=syn["type"], source="original", split="test"))
        rows.append(dict(text=r["label"].upper(), hpo_id=r["id"], lang="de", kind="label",
                         synonym_type=None, source="mt", split="test"))
    q = pd.DataFrame(rows)
    q[~q.duplicated("text", keep=False)].to_parquet(work / "pairs" / "queries.parquet")


def build_models(work: Path, base: str) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    ft, onnx = work / "models" / "finetuned", work / "models" / "onnx"
    if not ft.is_dir():
        shutil.copytree(base, ft)
    if not (onnx / "onnx" / "model.onnx").is_file():
        shutil.rmtree(onnx, ignore_errors=True)
        shutil.copytree(base, onnx)
        m = SentenceTransformer(str(onnx), backend="onnx", device="cpu")
        m.save(str(onnx))
        export_dynamic_quantized_onnx_model(m, "avx2", str(onnx), file_suffix="int8")


def sample_throughput(work: Path, n: int) -> dict:
    """Load-independent estimate: encode ``n`` random corpus documents per format on ONE
    thread and report process CPU seconds (a shared machine inflates wall time, and with
    2 threads OpenMP spin-waits inflate CPU time too); full corpus on 2 idle cores is
    about ``est_full_corpus_1core_cpu_s / 2``."""
    import random

    import onnxruntime as ort
    import pandas as pd
    import torch
    from sentence_transformers import SentenceTransformer

    from hpo_embed.retrieval.corpus import build_corpus

    torch.set_num_threads(1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    terms = pd.read_parquet(work / "hpo" / "terms.parquet")
    terms = terms[terms["selected"]]
    models = {"fp32_torch": (work / "models" / "finetuned", {}),
              "int8_onnx": (work / "models" / "onnx", {"backend": "onnx", "model_kwargs": {
                  "file_name": "onnx/model.onnx", "session_options": so}})}
    out = {}
    for fmt in ("label", "label_synonyms", "label_synonyms_definition"):
        docs = list(build_corpus(terms, fmt).values())
        sample = random.Random(0).sample(docs, min(n, len(docs)))
        for name, (path, kw) in models.items():
            m = SentenceTransformer(str(path), device="cpu", **kw)
            m.encode(sample[:64])
            c0 = time.process_time()
            m.encode_document(sample, batch_size=64, normalize_embeddings=True)
            cpu = time.process_time() - c0
            out[f"{fmt}.{name}"] = {"cpu_s_per_1k_docs": round(cpu / len(sample) * 1000, 2),
                                    "est_full_corpus_1core_cpu_s": round(cpu / len(sample) * len(docs), 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path)
    ap.add_argument("--frac", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--corpus-format", default="label")
    ap.add_argument("--sample-docs", type=int, default=0,
                    help="instead of the full stage: single-thread CPU seconds on N sampled documents")
    args = ap.parse_args()

    import torch

    from stages import benchmark as bm
    from hpo_embed.models.loader import resolve_model
    from hpo_embed.params import BenchmarkParams, TrainParams

    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_benchmark_"))
    work.mkdir(parents=True, exist_ok=True)
    base = resolve_model(TrainParams().base_model)
    build_inputs(work, args.frac)
    build_models(work, base)
    paths = bm.Paths(terms=work / "hpo" / "terms.parquet", edges=work / "hpo" / "edges.parquet",
                     queries=work / "pairs" / "queries.parquet", concepts=work / "pairs" / "concepts.parquet",
                     finetuned=work / "models" / "finetuned", onnx=work / "models" / "onnx",
                     out_dir=work / "out", metrics=work / "out" / "benchmark.json")
    if args.sample_docs:
        print(json.dumps(sample_throughput(work, args.sample_docs), indent=2))
        return
    shutil.rmtree(paths.cache, ignore_errors=True)
    bp = BenchmarkParams(corpus_format=args.corpus_format)
    report = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "load_avg_at_start": os.getloadavg(), "corpus_format": args.corpus_format}
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        res = bm.run(bp, TrainParams().base_model, paths)
        report[f"{label}_total_s"] = round(time.perf_counter() - t0, 1)
        if label == "cold":
            t = res["timings"]
            report["encode_wall_s"] = {k: round(v["wall_s"], 1) for k, v in t.items()}
            report["encode_cpu_s"] = {k: round(v["cpu_s"], 1) for k, v in t.items()}
            report["encode_total_wall_s"] = round(sum(v["wall_s"] for v in t.values()), 1)
            # CPU seconds over all threads: on an otherwise idle machine with N cores the wall
            # time is about cpu_s / N; on a shared machine wall time says little
            report["encode_total_cpu_s"] = round(sum(v["cpu_s"] for v in t.values()), 1)
    full = res["report"]
    report["corpus_documents"] = full["corpus.n_documents"]
    report["vectors"] = {k: v for k, v in full.items() if k.endswith("n_vectors")}
    report["queries"] = {k: v for k, v in full.items() if k.startswith("heldout") and k.endswith("n_queries")}
    report["mrr"] = {k: round(v, 4) for k, v in res["metrics"].items() if k.endswith(".mrr")}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
