"""Stage rerank_train: train the cross-encoder reranker (hpo_embed.rerank.model) on
train-split concepts, best checkpoint by dev MRR@10 of the bi-encoder's top-k reranked.

``python -m stages.rerank_train --candidates data/rerank/candidates.parquet --init-model
models/finetuned --terms data/hpo/terms.parquet --concepts data/pairs/concepts.parquet
--out models/reranker/model --checkpoints models/checkpoints-rerank --metrics metrics/rerank_train.json``
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path


from hpo_embed.checkpoints import fingerprint
from hpo_embed.checkpoints import prepare as prepare_checkpoints
from hpo_embed.common import UserError, publish_dir, run_stage, temp_sibling, write_json
from hpo_embed.models.loader import freeze_word_embeddings
from stages import parser

log = logging.getLogger("hpo_embed.rerank")


def parse_args(argv=None) -> argparse.Namespace:
    return parser("rerank_train", __doc__, {
        "candidates": "candidates",
        "finetuned": "rerank.init = finetuned: this folder",
        "base": "rerank.init = base: this folder",
        "terms": "terms",
        "concepts": "concepts",
        "out": "CrossEncoder folder",
        "checkpoints": "checkpoints",
        "metrics": "metrics",
    }).parse_args(argv)


def documents(terms_path: Path, fmt: str) -> dict[str, str]:
    from hpo_embed.retrieval.corpus import build_corpus, load_terms
    return build_corpus(load_terms(terms_path), fmt)


def publish(model, out: Path) -> None:
    """Save beside ``out`` and swap it in (never half-written)."""
    tmp = temp_sibling(out)
    if model is None:
        tmp.mkdir(parents=True)
        (tmp / "DISABLED.txt").write_text("rerank.enabled is false: no reranker was trained\n", encoding="utf-8")
    else:
        model.save(str(tmp))
    publish_dir(tmp, out)


def main(argv=None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    a = parse_args(argv)
    from hpo_embed.params import load_params
    p = load_params(a.params).rerank
    if not p.enabled:
        a.checkpoints.mkdir(parents=True, exist_ok=True)   # the --checkpoints folder exists either way
        publish(None, a.out)
        write_json(a.metrics, {"enabled": False})
        return
    t0 = time.time()
    from hpo_embed.rerank import model as M
    from hpo_embed.schemas import read_table

    cands = read_table(a.candidates, "candidates")
    concepts = read_table(a.concepts, "concepts")
    docs = documents(a.terms, p.document)
    try:
        examples = M.build_examples(cands, docs, p.hard_negatives, p.random_negatives, p.max_train_examples, p.seed,
                                    dict(zip(concepts["hpo_id"], concepts["split"])))
    except M.TooFewExamples as exc:
        raise UserError(f"{a.candidates}: {exc}; run the rerank_candidates stage (dvc repro rerank_candidates)") from None
    dev = cands[cands["set"] == "dev_eval"]
    if dev.empty:
        raise UserError(f"{a.candidates}: no dev_eval queries (params.yaml: rerank.dev_queries)")
    n_pos = float(examples["label"].sum())
    pos_weight = p.pos_weight or (len(examples) - n_pos) / max(1.0, n_pos)
    init = a.finetuned if p.init == "finetuned" else a.base
    if not (init / "config.json").is_file():
        raise UserError(f"{init}: no transformer (config.json) for rerank.init = {p.init}; run its stage first")
    fp = fingerprint({**p.model_dump(exclude={"resume", "save_total_limit", "test_queries", "target_precision",
                                                 "min_branch_examples", "calibration", "min_dev_examples",
                                                 "batch_size_predict", "bootstrap_resamples"}),
                        "pos_weight": pos_weight}, [a.candidates, a.terms, init / "model.safetensors"])
    last = prepare_checkpoints(a.checkpoints, fp, p.resume, "rerank.resume")
    model = M.load_cross_encoder(str(init), p.max_length, p.seed)
    frozen = freeze_word_embeddings(model) if p.freeze_embeddings else 0
    log.info("%d examples (%d queries, pos_weight %.2f), %d dev queries; %s frozen embedding weights; resume: %s",
             len(examples), examples["query"].nunique(), pos_weight, len(dev), f"{frozen:,}", last)
    samples = M.reranking_samples(dev, docs)
    t1 = time.time()
    trainer = M.train(model, examples, samples, a.checkpoints, lr=p.lr, epochs=p.epochs, batch_size=p.batch_size,
                      warmup_ratio=p.warmup_ratio, eval_steps=p.eval_steps, save_total_limit=p.save_total_limit,
                      pos_weight=pos_weight, seed=p.seed, resume_from=last, eval_batch_size=p.batch_size_predict)
    train_s = time.time() - t1
    evals = [e for e in trainer.state.log_history if trainer.best_metric_name in e]
    best = max(evals, key=lambda e: e[trainer.best_metric_name])
    publish(trainer.model, a.out)
    from hpo_embed.rerank.model import score_candidates, rerank
    from hpo_embed.retrieval.metrics import rank_summary
    rr = rerank(dev, score_candidates(trainer.model, dev, docs, p.batch_size_predict))
    metrics = {"enabled": True, "init": p.init, "examples": len(examples), "queries": int(examples["query"].nunique()),
               "languages": sorted(cands[cands["set"] == "train"]["lang"].unique().tolist()),
               "pos_weight": round(pos_weight, 4), "steps": trainer.state.global_step, "best_step": best["step"],
               "dev_eval_queries": len(dev), "dev_mrr@10_best": round(best[trainer.best_metric_name], 4),
               "dev_biencoder": {k: round(v, 4) for k, v in rank_summary(dev["gold_rank"]).items()},
               "dev_reranked": {k: round(v, 4) for k, v in rank_summary(rr["rr_rank"]).items()},
               "resumed_from": str(last) if last else None, "train_time_s": round(train_s, 1),
               "wall_time_s": round(time.time() - t0, 1)}
    write_json(a.metrics, metrics)
    log.info("dev MRR (full rank) bi-encoder %.4f -> reranked %.4f; %s", metrics["dev_biencoder"]["mrr"],
             metrics["dev_reranked"]["mrr"], a.out)


if __name__ == "__main__":
    run_stage(main)
