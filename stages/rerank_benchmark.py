"""Stage rerank_benchmark: bi-encoder vs bi-encoder + reranker on the held-out languages and
the phentrieve files (paired test), calibration and precision/coverage at the dev
thresholds on the held-out queries (hpo_embed.rerank.evaluate).

``python -m stages.rerank_benchmark --candidates data/rerank/candidates.parquet --model
models/reranker/model --calibration models/reranker/calibration.json --terms
data/hpo/terms.parquet --per-query data/rerank/per_query.parquet --report reports/rerank.md
--metrics metrics/rerank.json``
"""
from __future__ import annotations

import argparse
import io
import logging
import time
from pathlib import Path

from hpo_embed.common import UserError, atomic_write_bytes, atomic_write_text, run_stage, write_json
from stages import parser

log = logging.getLogger("hpo_embed.rerank")
ENABLE = ("The reranker is off (`rerank.enabled: false`). Enable it with `dvc exp run -S rerank.enabled=true` "
          "(or set it in params.yaml and `dvc repro`); docs/reranker.md.\n")


def parse_args(argv=None) -> argparse.Namespace:
    return parser("rerank_benchmark", __doc__, {
        "candidates": "candidates",
        "model": "model",
        "calibration": "calibration",
        "terms": "terms",
        "per-query": "per-query",
        "report": "markdown; the JSON with every figure goes beside it",
        "metrics": "metrics",
    }).parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    from hpo_embed.params import load_params
    p = load_params(a.params).rerank
    if not p.enabled:
        import pandas as pd
        buf = io.BytesIO()
        pd.DataFrame({"set": []}).to_parquet(buf, index=False)
        atomic_write_bytes(a.per_query, buf.getvalue())
        atomic_write_text(a.report, "# Reranker: disabled\n\n" + ENABLE)
        write_json(a.report.with_suffix(".json"), {"enabled": False})
        write_json(a.metrics, {"enabled": False})
        return
    t0 = time.time()
    import numpy as np
    import pandas as pd

    from hpo_embed.rerank import calibration as K
    from hpo_embed.rerank import evaluate as E
    from hpo_embed.rerank.model import load_cross_encoder, rerank, score_candidates
    from stages.calibrate import top1_table
    from hpo_embed.retrieval.corpus import build_corpus, load_terms
    from hpo_embed.schemas import read_table

    cands = read_table(a.candidates, "candidates")
    ev = cands[~cands["set"].isin(["train", "dev", "dev_eval"])]
    if p.test_queries is not None:   # a no-op on candidates made with the same rerank.test_queries
        held = ev[ev["set"] == "heldout"]
        parts = [g.sample(n=min(len(g), p.test_queries), random_state=p.seed) for _, g in held.groupby("lang")]
        ev = pd.concat([*parts, ev[ev["set"] != "heldout"]])
    ev = ev.reset_index(drop=True)
    if ev.empty:
        raise UserError(f"{a.candidates}: no held-out or external queries to benchmark")
    try:
        cal, cals = K.load(a.calibration)
    except ValueError as exc:
        raise UserError(f"{exc}; run the calibrate stage (dvc repro calibrate)") from None
    terms = load_terms(a.terms)
    docs = build_corpus(terms, p.document)
    labels = dict(zip(terms["id"], terms["label"]))
    model = load_cross_encoder(str(a.model), p.max_length)
    t1 = time.time()
    rr = rerank(ev, score_candidates(model, ev, docs, p.batch_size_predict))
    score_s = time.time() - t1
    cmp = E.compare(rr, p.bootstrap_resamples, p.seed)
    held = rr[rr["set"] == "heldout"]
    s, y, br = top1_table(held, dict(zip(terms["id"], terms["branch"])))
    calib = {"dev_queries": cal["dev_queries"], "target_precision": cal["target_precision"],
             "min_branch_examples": cal["min_branch_examples"], "dev_quality": cal["dev_quality"],
             "test_quality": K.calibration_report(cals, s, y)}
    thresholds = {"dev": cal["thresholds"], "test": K.evaluate_thresholds(cal, s, y, br)}
    fail = E.failures(rr)
    worst = E.worst_examples(rr, labels)
    info = {"k": p.k, "retrieval": p.retrieval, "test_queries": p.test_queries}
    atomic_write_text(a.report, E.report_markdown(cmp, fail, worst, calib, thresholds, labels, info))
    write_json(a.report.with_suffix(".json"), {"sets": cmp, "calibration": calib, "thresholds": thresholds,
                                               "failures": fail.to_dict("records"), "worst": worst, **info,
                                               "pairs_scored": int(ev["cand_ids"].map(len).sum()),
                                               "score_time_s": round(score_s, 1), "wall_time_s": round(time.time() - t0, 1)})
    buf = io.BytesIO()
    rr.to_parquet(buf, index=False)
    atomic_write_bytes(a.per_query, buf.getvalue())
    metrics = {"enabled": True}
    for name, e in cmp.items():
        if name.startswith("heldout.") and name not in ("heldout.all", "heldout.de"):
            continue
        metrics.update({f"{name}.mrr_bi": round(e["biencoder"]["mrr"], 4), f"{name}.mrr_rr": round(e["reranked"]["mrr"], 4),
                        f"{name}.hr1_bi": round(e["biencoder"]["hr@1"], 4), f"{name}.hr1_rr": round(e["reranked"]["hr@1"], 4),
                        f"{name}.p_value": e["diff"]["mrr"]["p_value"]})
    metrics.update({"test.ece_before": round(calib["test_quality"]["none"]["ece"], 4),
                    f"test.ece_{cal['chosen']}": round(calib["test_quality"][cal["chosen"]]["ece"], 4),
                    "test.precision_at_threshold": thresholds["test"]["overall"]["precision"],
                    "test.coverage_at_threshold": round(thresholds["test"]["overall"]["coverage"], 4)})
    key = "heldout.all" if "heldout.all" in cmp else next(iter(cmp))
    d = cmp[key]["diff"]["mrr"]
    metrics["reranker_better"] = bool(d["diff"] > 0 and (d["p_value"] if d["p_value"] == d["p_value"] else 1) < 0.05)
    write_json(a.metrics, metrics)
    log.info("%s: MRR %.4f -> %.4f (p=%s); %d pairs scored in %.0fs", key, cmp[key]["biencoder"]["mrr"],
             cmp[key]["reranked"]["mrr"], d["p_value"], int(np.sum(ev["cand_ids"].map(len))), score_s)


if __name__ == "__main__":
    run_stage(main)
