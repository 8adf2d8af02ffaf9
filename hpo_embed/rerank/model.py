"""The cross-encoder: training examples, training with CrossEncoderTrainer (best
checkpoint, resume), and reranking of candidate lists.

A training example is ``(query, English candidate document, label)``: for each training
query its gold concept (label 1), the first ``hard_negatives`` non-gold concepts of the
bi-encoder's top-k (label 0) and ``random_negatives`` random concepts (label 0).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("hpo_embed.rerank")


class TooFewExamples(ValueError):
    """Not enough data for a step (the stage turns it into a one-line UserError)."""


def reranker_examples(cands: pd.DataFrame, docs: dict[str, str], hard: int, rand: int, max_examples: int | None,
                   seed: int, split_of: dict[str, str] | None = None) -> pd.DataFrame:
    """Examples (columns query, document, label, hpo_id, candidate) from the ``set == 'train'``
    rows of ``cands``. ``split_of`` (concept -> split), when given, must put every expected
    concept in 'train' (else ValueError: a dev/test concept would leak into training).
    ``max_examples`` caps the queries used (whole groups of 1 + hard + rand examples)."""
    tr = cands[cands["set"] == "train"].reset_index(drop=True)
    if tr.empty:
        raise TooFewExamples("no training queries in the candidate table")
    if split_of is not None:
        bad = [h for e in tr["expected"] for h in e if split_of.get(h) != "train"]
        if bad:
            raise ValueError(f"training query of non-train concept {bad[0]} ({split_of.get(bad[0])})")
    per_query = 1 + hard + rand
    if max_examples is not None and len(tr) * per_query > max_examples:
        tr = tr.sample(n=max(1, max_examples // per_query), random_state=seed).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    ids = sorted(docs)
    rows = []
    for r in tr.itertuples(index=False):
        gold = set(r.expected)
        rows += [(r.query, docs[h], 1.0, r.expected[0], h) for h in r.expected[:1]]
        negs = [c for c in r.cand_ids if c not in gold][:hard]
        taken = gold | set(negs)
        while len(negs) < hard + rand:
            c = ids[int(rng.integers(len(ids)))]
            if c not in taken:
                taken.add(c)
                negs.append(c)
        rows += [(r.query, docs[c], 0.0, r.expected[0], c) for c in negs]
    ex = pd.DataFrame(rows, columns=["query", "document", "label", "hpo_id", "candidate"])
    return ex.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def reranking_samples(cands: pd.DataFrame, docs: dict[str, str], top: int = 10) -> list[dict[str, Any]]:
    """CrossEncoderRerankingEvaluator samples: the query, its gold documents and the
    bi-encoder's first ``top`` candidate documents (gold not added when the bi-encoder
    missed it; MRR@10 needs no more than 10, and each evaluation costs queries x top pairs)."""
    return [{"query": r.query, "positive": [docs[h] for h in r.expected],
             "documents": [docs[c] for c in list(r.cand_ids)[:top]]} for r in cands.itertuples(index=False)]


def load_cross_encoder(path: str, max_length: int, seed: int = 0, **kw):
    """A CrossEncoder (one logit) from a transformer folder (a SentenceTransformer folder is
    fine: its transformer gets a new classification head), without any saved prompt."""
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder

    torch.manual_seed(seed)
    model = CrossEncoder(path, num_labels=1, max_length=max_length, device="cpu", local_files_only=True, **kw)
    model.prompts = {}
    model.default_prompt_name = None
    return model


def train(model, examples: pd.DataFrame, dev_samples: list[dict], out_dir: Path, *, lr: float, epochs: float,
          batch_size: int, warmup_ratio: float, eval_steps: int, save_total_limit: int, pos_weight: float,
          seed: int, resume_from: Path | None, eval_batch_size: int = 64, callbacks: list | None = None):
    """Train ``model`` on ``examples`` (BinaryCrossEntropyLoss with ``pos_weight``), evaluate
    with CrossEncoderRerankingEvaluator on ``dev_samples`` every ``eval_steps`` (and at the
    last step), keep the best checkpoint by dev MRR@10 (loaded at the end). Returns the
    trainer (its ``state.log_history`` holds the evaluations)."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import TrainerCallback

    dataset = Dataset.from_dict({"query": examples["query"].tolist(), "document": examples["document"].tolist(),
                                 "label": examples["label"].astype(float).tolist()})
    evaluator = CrossEncoderRerankingEvaluator(dev_samples, at_k=10, always_rerank_positives=False, name="dev",
                                               batch_size=eval_batch_size, write_csv=False)
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(pos_weight)))
    best = "eval_dev_mrr@10"   # the evaluator's own primary metric is NDCG@10

    class LastEval(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= state.max_steps and state.global_step % args.eval_steps:
                control.should_evaluate = True
                control.should_save = True

    args = CrossEncoderTrainingArguments(
        output_dir=str(out_dir), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size, learning_rate=lr, warmup_ratio=warmup_ratio, seed=seed,
        eval_strategy="steps", eval_steps=eval_steps, save_strategy="steps", save_steps=eval_steps,
        save_total_limit=save_total_limit, load_best_model_at_end=True, metric_for_best_model=best,
        greater_is_better=True, logging_steps=max(1, eval_steps // 5), logging_first_step=True, report_to="none",
        use_cpu=True, dataloader_drop_last=False, disable_tqdm=False)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator,
                                  callbacks=[LastEval(), *(callbacks or [])])
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.best_metric_name = best
    return trainer


def score_candidates(model, cands: pd.DataFrame, docs: dict[str, str], batch_size: int = 64) -> list[np.ndarray]:
    """Raw cross-encoder logits of every (query, candidate document) of each row of
    ``cands`` (one array per row, in ``cand_ids`` order)."""
    import torch

    pairs = [(r.query, docs[c]) for r in cands.itertuples(index=False) for c in r.cand_ids]
    flat = model.predict(pairs, batch_size=batch_size, activation_fn=torch.nn.Identity(),
                         show_progress_bar=len(pairs) > 4 * batch_size, convert_to_numpy=True) \
        if pairs else np.zeros(0, dtype=np.float32)
    flat = np.asarray(flat, dtype=np.float64).reshape(-1)
    out, i = [], 0
    for r in cands.itertuples(index=False):
        out.append(flat[i:i + len(r.cand_ids)])
        i += len(r.cand_ids)
    return out


def rerank(cands: pd.DataFrame, logits: list[np.ndarray]) -> pd.DataFrame:
    """Reorder each row's candidates by descending logit (stable: bi-encoder order on ties)
    and recompute the gold rank: its position among the reranked top-k when a gold concept
    is there, else the bi-encoder's full rank (documents past k keep their places). Adds
    columns rr_ids, rr_logits, rr_rank, top_logit."""
    rr_ids, rr_logits, rr_rank, top = [], [], [], []
    for r, lg in zip(cands.itertuples(index=False), logits):
        order = np.argsort(-lg, kind="stable")
        ids = [r.cand_ids[i] for i in order]
        gold = set(r.expected)
        pos = next((i + 1 for i, c in enumerate(ids) if c in gold), None)
        rr_ids.append(ids)
        rr_logits.append([round(float(lg[i]), 6) for i in order])
        rr_rank.append(pos if pos is not None else int(r.gold_rank))
        top.append(float(lg[order[0]]) if len(order) else float("nan"))
    return cands.assign(rr_ids=rr_ids, rr_logits=rr_logits, rr_rank=np.asarray(rr_rank, dtype=np.int64),
                        top_logit=top)


# Score fusion: final score = bi-encoder cosine + w x cross-encoder logit, w chosen on dev.
# The grid spans "bi-encoder only" (0) to "cross-encoder decides" (a cosine gap of the top-k,
# ~0.01-0.1, is then smaller than any logit difference); dev picks the point.
FUSION_WEIGHTS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 10.0)


def fused_scores(cands: pd.DataFrame, logits: list[np.ndarray], weight: float) -> list[np.ndarray]:
    """Each row's ``cand_scores`` (bi-encoder cosine) + ``weight`` x its cross-encoder logits
    (``rerank`` orders by them like by logits)."""
    return [np.asarray(r.cand_scores, dtype=np.float64) + weight * np.asarray(lg, dtype=np.float64)
            for r, lg in zip(cands.itertuples(index=False), logits)]


def choose_fusion_weight(cands: pd.DataFrame, logits: list[np.ndarray],
                         weights: tuple[float, ...] = FUSION_WEIGHTS) -> tuple[float, dict[str, float]]:
    """The weight with the best MRR (full rank) on ``cands`` (dev queries) and the MRR of
    every weight tried; a tie goes to the smaller weight (closer to the bi-encoder alone)."""
    mrr = {}
    for w in weights:
        ranks = rerank(cands, fused_scores(cands, logits, w))["rr_rank"].to_numpy(dtype=float)
        mrr[w] = float(np.mean(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0))) if len(ranks) else 0.0
    best = max(weights, key=lambda w: (mrr[w], -w))
    return best, {f"{w:g}": round(v, 6) for w, v in mrr.items()}
