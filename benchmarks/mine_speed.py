"""Speed of hard-negative mining on the real data (issue 15 target: every training anchor
against the full corpus in <= 2 minutes on 2 cores), and the end-to-end run of the mine
stage it measures.

Runs the real stage (``hpo_embed.negatives.run.run``) on data/pairs, data/hpo and models/base with the
params.yaml ``mine:`` section and ``train.negatives`` forced to ``mined``, torch pinned to
``--threads``, writing into ``--out`` (default: a temporary folder, not data/negatives).
Prints the stage's breakdown (guard construction, encoding of corpus + anchors + positives
not in the corpus, search + selection), the process CPU time (on a shared machine,
CPU seconds / threads is the wall time on that many idle cores), and the exact search alone
(torch matmul + topk over anchors x corpus; faiss is not installed here).

    .venv/bin/python benchmarks/mine_speed.py [--threads 2] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    import numpy as np
    import torch
    torch.set_num_threads(a.threads)

    from hpo_embed.negatives.mining import model_candidates
    from hpo_embed.negatives.run import run
    from hpo_embed.params import load_params

    out = a.out or Path(tempfile.mkdtemp(prefix="mine_speed_"))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["negatives"] = "mined"
    params_file = out / "params.yaml"
    out.mkdir(parents=True, exist_ok=True)
    params_file.write_text(yaml.safe_dump(raw))
    c0, t0 = cpu_s(), time.time()
    report = run(load_params(params_file), ROOT / "data/pairs", ROOT / "data/hpo/terms.parquet",
                 ROOT / "data/hpo/edges.parquet", ROOT / "models/base", out / "negatives", out / "mine.json",
                 out / "mine.report.json", None)
    stage_wall, stage_cpu = time.time() - t0, cpu_s() - c0
    # the exact search alone, same shapes, random unit vectors, no guard
    p = load_params(params_file).mine
    rng = np.random.default_rng(0)
    at = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((report["anchors"], 384), np.float32)), dim=1)
    ct = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((report["corpus_texts"], 384), np.float32)), dim=1)
    empty = np.zeros(0, np.int64)
    guards = [{"same_concept": empty, "same_text": empty, "family": empty}] * report["anchors"]
    c1, t1 = cpu_s(), time.time()
    model_candidates(lambda s, e: at[s:e] @ ct.T, np.ones(report["anchors"]), guards, p)
    print(json.dumps({
        "threads": a.threads, "anchors": report["anchors"], "corpus_texts": report["corpus_texts"],
        "stage_wall_s": round(stage_wall, 1), "stage_cpu_s": round(stage_cpu, 1),
        "stage_wall_on_idle_cores_est_s": round(stage_cpu / a.threads, 1),
        "breakdown_s": report["seconds"], "exact_search_only_wall_s": round(time.time() - t1, 2),
        "exact_search_only_cpu_s": round(cpu_s() - c1, 2), "by_source": report["by_source"],
        "guard_removed": report["guard_removed"], "margin_removed": report["margin_removed"],
        "output": str(out)}, indent=2))


if __name__ == "__main__":
    main()
