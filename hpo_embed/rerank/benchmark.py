"""The rerank_benchmark stage: bi-encoder vs bi-encoder + reranker (the reranker's order, and
score fusion: cosine + w x logit with calibrate's dev-chosen w) on the held-out languages
and the phentrieve files (paired test), calibration and precision/coverage at the dev
thresholds on the held-out queries (the comparisons: hpo_embed.rerank.evaluate)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from hpo_embed.common import UserError, atomic_write_text, write_json, write_parquet
from hpo_embed.retrieval import calibration as K
from hpo_embed.rerank import evaluate as E
from hpo_embed.rerank.calibrate import top1_table
from hpo_embed.rerank.model import fused_scores, load_cross_encoder, rerank, score_candidates
from hpo_embed.retrieval.corpus import build_corpus, load_terms
from hpo_embed.schemas import read_table

log = logging.getLogger("hpo_embed.rerank")

ENABLE = ("The reranker is off (`rerank.enabled: false`). Enable it with `dvc exp run -S rerank.enabled=true` "
          "(or set it in params.yaml and `dvc repro`); docs/reranker.md.\n")


def evaluation_rows(p, candidates: Path) -> pd.DataFrame:
    """Held-out and external candidate rows (held-out sampled per language as in rerank_candidates)."""
    cands = read_table(candidates, "candidates")
    ev = cands[~cands["set"].isin(["train", "dev", "dev_eval"])]
    if p.test_queries is not None:   # a no-op on candidates made with the same rerank.test_queries
        held = ev[ev["set"] == "heldout"]
        parts = [g.sample(n=min(len(g), p.test_queries), random_state=p.seed) for _, g in held.groupby("lang")]
        ev = pd.concat([*parts, ev[ev["set"] != "heldout"]])
    ev = ev.reset_index(drop=True)
    if ev.empty:
        raise UserError(f"{candidates}: no held-out or external queries to benchmark")
    return ev


def _better(entry: dict) -> bool:
    d = entry["diff"]["mrr"]
    return bool(d["diff"] > 0 and (d["p_value"] if d["p_value"] == d["p_value"] else 1) < 0.05)


def headline(cmp: dict, calib: dict, thresholds: dict, chosen: str, fused: dict | None = None,
             weight: float | None = None) -> dict:
    metrics: dict = {"enabled": True}
    for name, e in cmp.items():
        if name.startswith("heldout.") and name not in ("heldout.all", "heldout.de"):
            continue
        metrics.update({f"{name}.mrr_bi": round(e["biencoder"]["mrr"], 4), f"{name}.mrr_rr": round(e["reranked"]["mrr"], 4),
                        f"{name}.hr1_bi": round(e["biencoder"]["hr@1"], 4), f"{name}.hr1_rr": round(e["reranked"]["hr@1"], 4),
                        f"{name}.p_value": e["diff"]["mrr"]["p_value"]})
        if fused is not None:
            f = fused[name]
            metrics.update({f"{name}.mrr_fused": round(f["reranked"]["mrr"], 4),
                            f"{name}.hr1_fused": round(f["reranked"]["hr@1"], 4),
                            f"{name}.p_value_fused": f["diff"]["mrr"]["p_value"]})
    metrics.update({"test.ece_before": round(calib["test_quality"]["none"]["ece"], 4),
                    f"test.ece_{chosen}": round(calib["test_quality"][chosen]["ece"], 4),
                    "test.precision_at_threshold": thresholds["test"]["overall"]["precision"],
                    "test.coverage_at_threshold": round(thresholds["test"]["overall"]["coverage"], 4)})
    key = "heldout.all" if "heldout.all" in cmp else next(iter(cmp))
    metrics["reranker_better"] = _better(cmp[key])
    if fused is not None:
        metrics.update({"fusion_weight": weight, "fusion_better": _better(fused[key])})
    return metrics


def run(p, candidates: Path, model_dir: Path, calibration: Path, terms_path: Path, per_query: Path, report: Path,
        metrics: Path) -> None:
    if not p.enabled:
        write_parquet(per_query, pa.table({"set": pa.array([], pa.string())}))
        atomic_write_text(report, "# Reranker: disabled\n\n" + ENABLE)
        write_json(report.with_suffix(".json"), {"enabled": False})
        write_json(metrics, {"enabled": False})
        return
    t0 = time.time()
    ev = evaluation_rows(p, candidates)
    try:
        cal, cals = K.load(calibration)
    except ValueError as exc:
        raise UserError(f"{exc}; run the calibrate stage (dvc repro calibrate)") from None
    terms = load_terms(terms_path)
    labels = dict(zip(terms["id"], terms["label"]))
    model = load_cross_encoder(str(model_dir), p.max_length)
    t1 = time.time()
    logits = score_candidates(model, ev, build_corpus(terms, p.document), p.batch_size_predict)
    rr = rerank(ev, logits)
    score_s = time.time() - t1
    cmp = E.compare(rr, p.bootstrap_resamples, p.seed)
    fusion = cal.get("fusion")   # absent from a calibration.json written before score fusion
    fused = None
    if fusion is not None:
        fz = rerank(ev, fused_scores(ev, logits, fusion["weight"]))
        fused = E.compare(fz, p.bootstrap_resamples, p.seed)
        rr = rr.assign(fused_ids=fz["rr_ids"], fused_rank=fz["rr_rank"])
    s, y, br = top1_table(rr[rr["set"] == "heldout"], dict(zip(terms["id"], terms["branch"])))
    calib = {"dev_queries": cal["dev_queries"], "target_precision": cal["target_precision"],
             "min_branch_examples": cal["min_branch_examples"], "dev_quality": cal["dev_quality"],
             "test_quality": K.calibration_report(cals, s, y)}
    thresholds = {"dev": cal["thresholds"], "test": K.evaluate_thresholds(cal, s, y, br)}
    fail, worst = E.failures(rr), E.worst_examples(rr, labels)
    info = {"k": p.k, "retrieval": p.retrieval, "test_queries": p.test_queries, "fusion": fusion}
    atomic_write_text(report, E.report_markdown(cmp, fail, worst, calib, thresholds, labels, info, fused))
    write_json(report.with_suffix(".json"), {"sets": cmp, "fused_sets": fused, "calibration": calib, "thresholds": thresholds,
                                             "failures": fail.to_dict("records"), "worst": worst, **info,
                                             "pairs_scored": int(ev["cand_ids"].map(len).sum()),
                                             "score_time_s": round(score_s, 1), "wall_time_s": round(time.time() - t0, 1)})
    write_parquet(per_query, pa.Table.from_pandas(rr, preserve_index=False))
    write_json(metrics, headline(cmp, calib, thresholds, cal["chosen"], fused, fusion and fusion["weight"]))
    key = "heldout.all" if "heldout.all" in cmp else next(iter(cmp))
    log.info("%s: MRR %.4f -> %.4f (p=%s); %d pairs scored in %.0fs", key, cmp[key]["biencoder"]["mrr"],
             cmp[key]["reranked"]["mrr"], cmp[key]["diff"]["mrr"]["p_value"], int(np.sum(ev["cand_ids"].map(len))),
             score_s)
    if fused is not None:
        log.info("%s: score fusion (w = %g): MRR %.4f (p=%s)", key, fusion["weight"], fused[key]["reranked"]["mrr"],
                 fused[key]["diff"]["mrr"]["p_value"])
