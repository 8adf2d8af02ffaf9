"""INT8 candidates of the quantize stage, measured on this machine (issue 16), plus an
onnxruntime profile of where the time goes.

    .venv/bin/python benchmarks/bench_quantize.py [--model models/finetuned] [--candidates all|a,b]
        [--threads 2] [--size 512] [--queries 600] [--gate-corpus 3000] [--repeats 3]
        [--out /tmp/bench_quantize] [--profile NAME[,NAME]]
    .venv/bin/python benchmarks/bench_quantize.py --from-build models/onnx-build --profile onnx_fp32,fused_dynamic

Runs the stage's own ``method: auto`` path (stages.quantize.run: export, build the
candidates, interleaved speed in the production shapes against PyTorch fp32, quality gate
on held-out queries, selection) into ``--out`` (not models/onnx): ``--out/reports/quantize.md``
is the candidate table. ``--profile`` then profiles the named models (candidates,
``onnx_fp32``) with onnxruntime's profiler at batch 32 and prints the share of time per
operator type, plus the share of an encode() call spent in tokenisation. ``--from-build``
profiles the candidates the quantize stage already built (models/onnx-build) on its own
measurement texts, without rebuilding or re-measuring anything.
Goal (issue 16): INT8 >= 2x PyTorch fp32 sentences/s at batch 32 on 2 threads, gate passed.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hpo_embed.common import ROOT  # noqa: E402
from hpo_embed.export import candidates as QC, measure as QM, onnx as QO, quantize as Q, report as QR  # noqa: E402
from hpo_embed.models.loader import resolve_model  # noqa: E402
from hpo_embed.params import load_params  # noqa: E402

TERMS = ROOT / "data" / "hpo" / "terms.parquet"


def profile(folder: Path, file_name: str, texts: list[str], threads: int, batch_size: int,
            passes: int = 3) -> dict:
    """onnxruntime profiler: share of model time per operator type over ``passes`` passes
    of ``texts`` at ``batch_size``; and tokenisation vs model time of encode()."""
    import onnxruntime as ort

    feeds = QO.model_feeds(folder, file_name, texts, batch_size)
    so = QO.ort_session_options(threads)
    so.enable_profiling = True
    # the trace goes to a temporary folder: never into the (DVC-tracked) build folder
    so.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="ort-profile-")) / f"profile_{Path(file_name).stem}")
    sess = ort.InferenceSession(str(folder / file_name), so, providers=["CPUExecutionProvider"])
    for f in feeds:  # warm-up
        sess.run(None, f)
    t0 = time.perf_counter()
    for _ in range(passes):
        for f in feeds:
            sess.run(None, f)
    run_s = (time.perf_counter() - t0) / passes
    events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values()) or 1
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="np")
    tok_s = time.perf_counter() - t0
    return {"ops_share": {k: round(v / total, 3) for k, v in by_op.most_common(12)},
            "session_s_per_pass": round(run_s, 3), "tokenize_s_per_pass": round(tok_s, 3),
            "tokenize_share_of_encode": round(tok_s / (tok_s + run_s), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/finetuned")
    ap.add_argument("--terms", type=Path, default=TERMS)
    ap.add_argument("--candidates", default="params", help="params (quantize.candidates) | all | a,b,...: "
                    + ", ".join(QC.CANDIDATES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, help="texts in the throughput set (default: quantize.measure_size)")
    ap.add_argument("--queries", type=int, help="held-out queries (default: quantize.agreement_queries)")
    ap.add_argument("--gate-corpus", type=int, help="gate corpus size (default: quantize.gate_corpus; 0 = all)")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_quantize"))
    ap.add_argument("--profile", default="", help="comma-separated models to profile after the run")
    ap.add_argument("--from-build", type=Path, help="profile the candidates of this build folder only (no run)")
    args = ap.parse_args()
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)
    if args.from_build:
        texts = json.loads((args.from_build / QM.TEXTS_FILE).read_text())["texts"]
        batch = load_params().quantize.batch_size
        for name in (args.profile or "onnx_fp32").split(","):
            fname = QO.FP32_FILE if name == "onnx_fp32" else f"{QC.CANDIDATE_DIR}/{name}.onnx"
            print(name, json.dumps(profile(args.from_build, fname, texts, args.threads, batch)))
        return

    p = load_params().quantize
    over = {"method": "auto", "threads": args.threads}
    if args.candidates == "all":
        over["candidates"] = list(QC.CANDIDATES)
    elif args.candidates != "params":
        over["candidates"] = args.candidates.split(",")
    for key, val in (("measure_size", args.size), ("agreement_queries", args.queries),
                     ("gate_corpus", args.gate_corpus), ("repeats", args.repeats)):
        if val is not None:
            over[key] = val
    p = type(p).model_validate({**p.model_dump(), **over})   # params models are frozen pydantic models
    import torch
    torch.set_num_threads(args.threads)
    src = Path(resolve_model(args.model, "--model"))
    out = args.out / "onnx"
    t0 = time.time()
    rep = Q.run(p, src, out, args.out / "metrics.json", terms_path=args.terms, reports=args.out / "reports")
    print((args.out / "reports" / "quantize.md").read_text())
    print(json.dumps(QR.headline(rep)), f"stage {time.time() - t0:.0f}s")
    if args.profile:
        build = QO.default_build_dir(out)   # the fp32 export and the candidates
        texts = json.loads((build / QM.TEXTS_FILE).read_text())["texts"]
        prof = {}
        for name in args.profile.split(","):
            fname = QO.FP32_FILE if name == "onnx_fp32" else f"{QC.CANDIDATE_DIR}/{name}.onnx"
            prof[name] = profile(build, fname, texts, args.threads, p.batch_size)
            print(name, json.dumps(prof[name]))
        rep["profile"] = prof
        (args.out / "reports" / "quantize.json").write_text(json.dumps(rep, indent=2, default=str))


if __name__ == "__main__":
    main()
