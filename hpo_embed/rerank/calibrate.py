"""The calibrate stage: Platt and isotonic calibration of the reranker's top-1 logit on the
dev split, ECE / Brier before and after, a reliability diagram (DVC plot), the per-branch
thresholds for ``rerank.target_precision`` (the maths: hpo_embed.retrieval.calibration) and
the score-fusion weight (bi-encoder cosine + w x logit, the dev MRR's best w)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hpo_embed.common import UserError, atomic_write_text, publish_dir, temp_sibling, write_json
from hpo_embed.retrieval import calibration as K
from hpo_embed.rerank.model import FUSION_WEIGHTS, choose_fusion_weight, load_cross_encoder, rerank, score_candidates
from hpo_embed.retrieval.corpus import build_corpus, load_terms
from hpo_embed.schemas import read_table

log = logging.getLogger("hpo_embed.rerank")


def top1_table(rr: pd.DataFrame, branch_of: dict[str, str]):
    """(logit, correct, branch of the predicted concept) of each reranked query."""
    s = rr["top_logit"].to_numpy(dtype=float)
    y = np.asarray([1.0 if ids and ids[0] in set(e) else 0.0 for ids, e in zip(rr["rr_ids"], rr["expected"])])
    br = [branch_of.get(ids[0], "") if ids else "" for ids in rr["rr_ids"]]
    return s, y, br


def write_plots(folder: Path, rows: dict[str, list[dict]]) -> None:
    tmp = temp_sibling(folder)
    tmp.mkdir(parents=True)
    rows = {**rows, "ideal": [{"bin": i, "confidence": i / 15, "accuracy": i / 15, "count": 0} for i in range(16)]}
    for name, rs in rows.items():
        lines = ["confidence,accuracy,count,bin"] + [f"{r['confidence']:.6f},{r['accuracy']:.6f},{r['count']},{r['bin']}"
                                                      for r in rs]
        atomic_write_text(tmp / f"{name}.csv", "\n".join(lines) + "\n")
    publish_dir(tmp, folder)


def dev_top1(p, candidates: Path, model_dir: Path, terms_path: Path):
    """The dev queries reranked: (rows, top-1 logits, correct, branches, every candidate's logits)."""
    cands = read_table(candidates, "candidates")
    dev = cands[cands["set"] == "dev"].reset_index(drop=True)
    try:
        K.check_size(len(dev), p.min_dev_examples, str(candidates))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: no reranker; run the rerank_train stage first (dvc repro rerank_train)")
    terms = load_terms(terms_path)
    model = load_cross_encoder(str(model_dir), p.max_length)
    logits = score_candidates(model, dev, build_corpus(terms, p.document), p.batch_size_predict)
    s, y, br = top1_table(rerank(dev, logits), dict(zip(terms["id"], terms["branch"])))
    return dev, s, y, br, logits


def run(p, candidates: Path, model_dir: Path, terms: Path, out: Path, plots: Path, metrics: Path) -> None:
    if not p.enabled:
        write_json(out, {"format": "disabled", "note": "rerank.enabled is false"})
        write_plots(plots, {})
        write_json(metrics, {"enabled": False})
        return
    dev, s, y, br, logits = dev_top1(p, candidates, model_dir, terms)
    try:
        cals = K.fit_all(s, y, p.min_dev_examples, str(candidates))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    quality = K.calibration_report(cals, s, y)
    th = K.branch_thresholds(s, y, br, p.target_precision, p.min_branch_examples)
    weight, fusion_mrr = choose_fusion_weight(dev, logits)
    fusion = {"score": "bi-encoder cosine (cand_scores) + weight x raw logit", "weight": weight,
              "chosen_on": f"dev MRR over {len(dev)} queries", "dev_mrr": fusion_mrr,
              "grid": list(FUSION_WEIGHTS)}
    info = {"target_precision": p.target_precision, "min_branch_examples": p.min_branch_examples,
            "dev_queries": len(dev), "dev_top1_accuracy": float(y.mean()), "dev_quality": quality,
            "k": p.k, "retrieval": p.retrieval, "document": p.document, "max_length": p.max_length,
            "fusion": fusion}
    write_json(out, K.to_json(cals, p.calibration, th, info))
    write_plots(plots, {m: K.reliability(c.predict(s), y) for m, c in cals.items()})
    write_json(metrics, {
        "enabled": True, "dev_queries": len(dev), "dev_top1_accuracy": round(float(y.mean()), 4),
        **{f"{m}.{q}": round(v, 4) for m, d in quality.items() for q, v in d.items()},
        "global_threshold": th["global"]["threshold"], "global_coverage": round(th["global"]["coverage"], 4),
        "branches_own_threshold": sum(v["source"] == "branch" for v in th["branches"].values()),
        "fusion_weight": weight, "fusion_dev_mrr": fusion_mrr[f"{weight:g}"], "biencoder_dev_mrr": fusion_mrr["0"]})
    log.info("score fusion: w = %g (dev MRR %.4f; bi-encoder alone %.4f)", weight, fusion_mrr[f"{weight:g}"],
             fusion_mrr["0"])
    log.info("dev ECE none %.3f -> platt %.3f / isotonic %.3f; global threshold %s (coverage %.2f at precision >= %.2f)",
             quality["none"]["ece"], quality["platt"]["ece"], quality["isotonic"]["ece"], th["global"]["threshold"],
             th["global"]["coverage"], p.target_precision)
