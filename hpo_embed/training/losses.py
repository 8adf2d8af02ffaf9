"""Loss factory and training-dataset layout for the train stage.

| train.loss          | sentence-transformers loss             | dataset columns                      |
|---------------------|----------------------------------------|--------------------------------------|
| mnrl (default)      | MultipleNegativesRankingLoss           | anchor, positive[, negative]         |
| cached_mnrl         | CachedMultipleNegativesRankingLoss     | anchor, positive[, negative]         |
| gist                | GISTEmbedLoss (guide = train.guide_model) | anchor, positive[, negative]      |
| triplet             | TripletLoss (margin)                   | anchor, positive, negative           |
| cosine              | CosineSimilarityLoss                   | sentence1, sentence2, label (1 / 0)  |
| contrastive         | ContrastiveLoss (margin)               | sentence1, sentence2, label (1 / 0)  |
| online_contrastive  | OnlineContrastiveLoss (margin)         | sentence1, sentence2, label (1 / 0)  |

``train.matryoshka_dims`` wraps any of them in MatryoshkaLoss. Negatives (the
``negative`` column, or the label-0 rows) come from ``hpo_embed.training.sampling.sample_negatives``.
"""
from __future__ import annotations

import os
from typing import Any

import pandas as pd
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses

from hpo_embed.common import UserError
from hpo_embed.models.loader import load_sentence_transformer, resolve_model
from hpo_embed.ontology.graph import IsAGraph
from hpo_embed.params import IN_BATCH_LOSSES, MineParams, TrainParams
from hpo_embed.training.sampling import row_keys, sample_negatives

TRIPLET = ("triplet",)
MINED_LOSSES = ("mnrl", "cached_mnrl", "gist", "triplet")   # losses that take mined negative columns
PAIR_LABEL = ("cosine", "contrastive", "online_contrastive")


def negatives_for(p: TrainParams) -> str:
    """The effective negative sampler: ``none``, ``random`` or ``sibling``."""
    neg = p.negatives
    if neg == "auto":
        return "none" if p.loss in IN_BATCH_LOSSES else "random"
    return neg


def build_examples(pairs: pd.DataFrame, p: TrainParams,
                   graph: IsAGraph | None = None) -> tuple[Dataset, list[tuple[str, ...]], dict[str, Any]]:
    """The training ``Dataset`` (only the loss's input columns, in order), the sampler keys
    per row and a few counts for the metrics."""
    neg = negatives_for(p)
    anchors, positives, ids = list(pairs["anchor"]), list(pairs["positive"]), list(pairs["hpo_id"])
    info: dict[str, Any] = {"negatives": neg}
    if neg == "none":
        ds = Dataset.from_dict({"anchor": anchors, "positive": positives})
        return ds, row_keys([(c,) for c in ids], zip(anchors, positives)), info
    pool: dict[str, list[str]] = {}
    for c, t in zip(ids, positives):
        pool.setdefault(c, []).append(t)
    neg_texts, neg_ids, n_sib = sample_negatives(ids, pool, neg, p.seed, graph)
    info["negatives_from_sibling"] = n_sib
    if p.loss in PAIR_LABEL:
        n = len(anchors)
        ds = Dataset.from_dict({"sentence1": anchors + anchors, "sentence2": positives + neg_texts,
                                "label": [1.0] * n + [0.0] * n})
        concepts = [(c,) for c in ids] + [(c, d) for c, d in zip(ids, neg_ids)]
        texts = list(zip(anchors, positives)) + list(zip(anchors, neg_texts))
        return ds, row_keys(concepts, texts), info
    ds = Dataset.from_dict({"anchor": anchors, "positive": positives, "negative": neg_texts})
    return ds, row_keys([(c, d) for c, d in zip(ids, neg_ids)], zip(anchors, positives, neg_texts)), info


class CachedMNRL(losses.CachedMultipleNegativesRankingLoss):
    """CachedMultipleNegativesRankingLoss whose mini-batch embeddings run under autocast in
    both passes. The library re-embeds with gradients inside ``backward()``, which the Trainer
    runs outside autocast: in fp32, ~1.5x the activation memory and no tensor-core speed-up.
    ``autocast_dtype`` (set by ``set_precision``) restores the training precision there."""

    autocast_dtype = None

    def embed_minibatch(self, *args, **kwargs):
        if self.autocast_dtype is None:
            return super().embed_minibatch(*args, **kwargs)
        with torch.autocast(device_type=self.model.device.type, dtype=self.autocast_dtype):
            return super().embed_minibatch(*args, **kwargs)


def set_precision(loss, precision: str) -> None:
    """Tell a cached loss (also inside MatryoshkaLoss) the training precision (fp32 | fp16 | bf16)."""
    target = loss if isinstance(loss, CachedMNRL) else getattr(loss, "loss", None)
    if isinstance(target, CachedMNRL):
        target.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def load_model(spec: str, param: str, device: str | None = None) -> SentenceTransformer:
    return load_sentence_transformer(resolve_model(spec, param), f"params.yaml: {param}: {spec}", device=device)


def build_loss(model: SentenceTransformer, p: TrainParams, mined: MineParams | None = None,
               guide: SentenceTransformer | None = None):
    """The loss of ``train.loss``. With ``mined`` (``train.negatives: mined``) the dataset's
    negative columns are extra negatives: MNRL / CachedMNRL take ``mine.hardness_*``, the
    triplet loss ``mine.triplet_distance``, and only ``MINED_LOSSES`` are allowed."""
    def margin(name: str) -> dict:
        return {} if p.margin is None else {name: p.margin}

    if mined is not None and p.loss not in MINED_LOSSES:
        raise UserError(f"params.yaml: train.negatives: mined needs train.loss in {', '.join(MINED_LOSSES)}, "
                        f"got {p.loss!r}")
    hard = {} if mined is None or mined.hardness_mode is None else {
        "hardness_mode": mined.hardness_mode, "hardness_strength": mined.hardness_strength}
    if p.loss == "mnrl":
        loss = losses.MultipleNegativesRankingLoss(model, **hard)
    elif p.loss == "cached_mnrl":
        # under torchrun / accelerate launch: negatives from every device's batch
        multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
        loss = CachedMNRL(model, mini_batch_size=p.mini_batch_size, gather_across_devices=multi,
                          show_progress_bar=False, **hard)
    elif p.loss == "gist":
        if guide is None:   # train.guide_model is required with gist (hpo_embed/params.py)
            guide = load_model(p.guide_model, "train.guide_model", device=str(model.device))
        loss = losses.GISTEmbedLoss(model, guide=guide)
    elif p.loss == "cosine":
        loss = losses.CosineSimilarityLoss(model)
    elif p.loss == "contrastive":
        loss = losses.ContrastiveLoss(model, **margin("margin"))
    elif p.loss == "online_contrastive":
        loss = losses.OnlineContrastiveLoss(model, **margin("margin"))
    elif p.loss == "triplet" and mined is not None:
        cosine = mined.triplet_distance == "cosine"
        metric = losses.TripletDistanceMetric.COSINE if cosine else losses.TripletDistanceMetric.EUCLIDEAN
        loss = losses.TripletLoss(model, distance_metric=metric,
                                  triplet_margin=p.margin if p.margin is not None else (0.1 if cosine else 5.0))
    elif p.loss == "triplet":
        loss = losses.TripletLoss(model, **margin("triplet_margin"))
    else:  # guarded by params choices
        raise UserError(f"params.yaml: train.loss: unknown loss {p.loss!r}")
    if p.matryoshka_dims:
        dim = model.get_embedding_dimension()
        bad = [d for d in p.matryoshka_dims if d < 1 or d > dim]
        if bad:
            raise UserError(f"params.yaml: train.matryoshka_dims: {bad} outside 1..{dim} (the model's dimension)")
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=sorted(set(p.matryoshka_dims), reverse=True))
    return loss
