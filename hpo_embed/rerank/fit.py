"""The rerank_train stage: train the cross-encoder reranker (hpo_embed.rerank.model) on
train-split concepts, best checkpoint by dev MRR@10 of the bi-encoder's top-k reranked."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from hpo_embed.checkpoints import finish, fingerprint, run_folder
from hpo_embed.checkpoints import prepare as prepare_checkpoints
from hpo_embed.common import UserError, publish_dir, temp_sibling, write_json
from hpo_embed.models.loader import freeze_word_embeddings
from hpo_embed.rerank import model as M
from hpo_embed.retrieval.corpus import build_corpus, load_terms
from hpo_embed.retrieval.metrics import rank_summary
from hpo_embed.schemas import read_table

log = logging.getLogger("hpo_embed.rerank")
NOT_IN_FINGERPRINT = {"resume", "save_total_limit", "test_queries", "target_precision", "min_branch_examples",
                      "calibration", "min_dev_examples", "batch_size_predict", "bootstrap_resamples"}


def publish_reranker(model, out: Path) -> None:
    """Save beside ``out`` and swap it in (never half-written)."""
    tmp = temp_sibling(out)
    if model is None:
        tmp.mkdir(parents=True)
        (tmp / "DISABLED.txt").write_text("rerank.enabled is false: no reranker was trained\n", encoding="utf-8")
    else:
        model.save(str(tmp))
    publish_dir(tmp, out)


def training_data(p, candidates: Path, docs: dict[str, str],
                  concepts: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(training examples, dev_eval candidate rows, languages of the training queries)."""
    cands = read_table(candidates, "candidates")
    split_of = dict(zip(*(read_table(concepts, "concepts")[c] for c in ("hpo_id", "split"))))
    try:
        examples = M.reranker_examples(cands, docs, p.hard_negatives, p.random_negatives, p.max_train_examples, p.seed,
                                    split_of)
    except M.TooFewExamples as exc:
        raise UserError(f"{candidates}: {exc}; run the rerank_candidates stage (dvc repro rerank_candidates)") from None
    dev = cands[cands["set"] == "dev_eval"]
    if dev.empty:
        raise UserError(f"{candidates}: no dev_eval queries (params.yaml: rerank.dev_queries)")
    return examples, dev, sorted(cands[cands["set"] == "train"]["lang"].unique().tolist())


def run(p, candidates: Path, finetuned: Path, base: Path, terms: Path, concepts: Path, out: Path,
        checkpoints: Path, metrics: Path) -> None:
    if not p.enabled:
        checkpoints.mkdir(parents=True, exist_ok=True)   # the --checkpoints folder exists either way
        publish_reranker(None, out)
        write_json(metrics, {"enabled": False})
        return
    t0 = time.time()
    docs = build_corpus(load_terms(terms), p.document)
    examples, dev, languages = training_data(p, candidates, docs, concepts)
    n_pos = float(examples["label"].sum())
    pos_weight = p.pos_weight or (len(examples) - n_pos) / max(1.0, n_pos)
    init = finetuned if p.init == "finetuned" else base
    if not (init / "config.json").is_file():
        raise UserError(f"{init}: no transformer (config.json) for rerank.init = {p.init}; run its stage first")
    fp = fingerprint({**p.model_dump(exclude=NOT_IN_FINGERPRINT), "pos_weight": pos_weight},
                     [candidates, terms, init / "model.safetensors"])
    checkpoints = run_folder(checkpoints, fp)
    last = prepare_checkpoints(checkpoints, fp, p.resume, "rerank.resume")
    model = M.load_cross_encoder(str(init), p.max_length, p.seed)
    frozen = freeze_word_embeddings(model) if p.freeze_embeddings else 0
    log.info("%d examples (%d queries, pos_weight %.2f), %d dev queries; %s frozen embedding weights; resume: %s",
             len(examples), examples["query"].nunique(), pos_weight, len(dev), f"{frozen:,}", last)
    t1 = time.time()
    trainer = M.train(model, examples, M.reranking_samples(dev, docs), checkpoints, lr=p.lr, epochs=p.epochs,
                      batch_size=p.batch_size, warmup_ratio=p.warmup_ratio, eval_steps=p.eval_steps,
                      save_total_limit=p.save_total_limit, pos_weight=pos_weight, seed=p.seed, resume_from=last,
                      eval_batch_size=p.batch_size_predict)
    train_s = time.time() - t1
    best = max((e for e in trainer.state.log_history if trainer.best_metric_name in e),
               key=lambda e: e[trainer.best_metric_name])
    publish_reranker(trainer.model, out)
    rr = M.rerank(dev, M.score_candidates(trainer.model, dev, docs, p.batch_size_predict))
    m = {"enabled": True, "init": p.init, "examples": len(examples), "queries": int(examples["query"].nunique()),
         "languages": languages, "pos_weight": round(pos_weight, 4),
         "steps": trainer.state.global_step, "best_step": best["step"], "dev_eval_queries": len(dev),
         "dev_mrr@10_best": round(best[trainer.best_metric_name], 4),
         "dev_biencoder": {k: round(v, 4) for k, v in rank_summary(dev["gold_rank"]).items()},
         "dev_reranked": {k: round(v, 4) for k, v in rank_summary(rr["rr_rank"]).items()},
         "resumed_from": str(last) if last else None, "train_time_s": round(train_s, 1),
         "wall_time_s": round(time.time() - t0, 1)}
    write_json(metrics, m)
    finish(checkpoints)
    log.info("dev MRR (full rank) bi-encoder %.4f -> reranked %.4f; %s", m["dev_biencoder"]["mrr"],
             m["dev_reranked"]["mrr"], out)
