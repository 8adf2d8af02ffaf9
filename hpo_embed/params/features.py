"""The sections of the optional features: mine (hard negatives; docs/negatives.md) and rerank
(the cross-encoder stages; docs/reranker.md)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hpo_embed.params.fields import Section, UniqueList


class MineParams(Section):
    """The ``mine:`` section: how the mine stage draws hard negatives, and (the last four)
    how the train stage uses them."""

    sources: UniqueList[Literal["ontology", "model"]] = Field(
        default_factory=lambda: ["ontology", "model"],
        description="where hard negatives come from: ontology relatives (mine.ontology_relations) and/or "
                    "the nearest corpus texts under the base model; with both, anchors alternate sources")
    ontology_relations: UniqueList[Literal["siblings", "cousins"]] = Field(
        default_factory=lambda: ["siblings", "cousins"],
        description="ontology candidates: siblings (share a parent), cousins (share a grandparent)")
    ontology_family: bool = Field(
        False, description="parents/children (and all ancestors/descendants) may be negatives; false "
                           "(default): for HPO they are partly right answers, so every source skips them")
    corpus_format: Literal["label", "label_synonyms"] = Field(
        "label", description="mining corpus: English labels of train-split concepts (+ EXACT synonyms, one text each)")
    range_min: int = Field(0, ge=0, description="model source: skip the range_min most similar candidates left after guard and margins")
    range_max: int = Field(50, ge=1, le=1000, description="model source: consider only the range_max most similar left after guard and margins")
    relative_margin: float | None = Field(
        0.05, ge=0.0, lt=1.0, description="drop candidates scoring above (1 - margin) x the positive's score "
                                          "(NV-Retriever TopK-PercPos; 0.05 = 95%); null = off")
    absolute_margin: float | None = Field(
        None, ge=0.0, description="drop candidates scoring above the positive's score - margin; null = off")
    num_negatives: int = Field(1, ge=1, le=16, description="hard negatives per anchor (negative_1..n columns)")
    sampling: Literal["top", "random"] = Field(
        "top", description="top = the most similar surviving candidates; random = uniformly among them")
    seed: int = Field(42, ge=0, description="seed of random sampling, easy negatives and source alternation")
    batch_size: int = Field(64, ge=1, description="encoding batch size")
    rounds: Literal[1, 2] = Field(
        1, description="2 = iterative: train half the rows, mine again with that model, train the rest (train stage)")

    # train side (read by the train stage only)
    easy_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="share of rows whose negatives are easy (random other concept) "
                                         "instead of hard, against forgetting; 0.34 ~ 2 hard : 1 easy")
    hardness_mode: Literal["in_batch_negatives", "hard_negatives", "all_negatives"] | None = Field(
        None, description="mnrl / cached_mnrl hardness weighting (sentence-transformers); null = off")
    hardness_strength: float = Field(0.0, ge=0.0, description="alpha of the hardness weighting (5-9 in the papers)")
    triplet_distance: Literal["cosine", "euclidean"] = Field(
        "cosine", description="triplet loss distance; the margin is train.margin (null = 0.1 for cosine)")

    @model_validator(mode="after")
    def _range(self) -> "MineParams":
        if self.range_min >= self.range_max:
            raise ValueError(f"range_min ({self.range_min}) must be < range_max ({self.range_max})")
        if "ontology" in self.sources and not self.ontology_relations and not self.ontology_family:
            raise ValueError("sources has ontology but ontology_relations is empty and ontology_family false")
        return self


class RerankParams(Section):
    """The ``rerank:`` section."""

    enabled: bool = Field(True, description="run the reranker stages; false = each stage writes a 'disabled' "
                                            "output in seconds (dvc repro never fails) and nothing is reranked")
    init: Literal["finetuned", "base"] = Field(
        "finetuned", description="transformer the CrossEncoder starts from: the fine-tuned bi-encoder "
                                 "(models/finetuned) or the untuned base model (models/base)")
    retrieval: Literal["single", "multi"] = Field(
        "multi", description="bi-encoder candidate retrieval: single = one vector per concept (English label); "
                             "multi = label + EXACT synonyms, concept score = max (the benchmark headline mode)")
    k: int = Field(20, ge=2, le=200, description="bi-encoder candidates reranked per query (top-k)")
    document: Literal["label", "label_synonyms"] = Field(
        "label", description="English candidate text the cross-encoder reads (stages.corpus formats)")
    max_length: int = Field(64, ge=16, le=512, description="tokens per (query, candidate) pair")
    train_queries: int = Field(600, ge=10, description="random cap on training queries (train-split concepts; "
                                                       "label/synonym texts in every language)")
    hard_negatives: int = Field(6, ge=0, description="negatives per training query from the bi-encoder's top-k")
    random_negatives: int = Field(2, ge=0, description="random negatives per training query (any concept)")
    max_train_examples: int | None = Field(2400, ge=10, description="cap on (query, candidate, label) examples; "
                                                                    "null = all")
    pos_weight: float | None = Field(None, gt=0, description="BinaryCrossEntropyLoss pos_weight; null = "
                                                             "negatives / positives of the training examples")
    freeze_embeddings: bool = Field(True, description="keep the word-embedding matrix fixed (faster steps; "
                                                      "the multilingual vocabulary stays aligned)")
    lr: float = Field(3e-5, gt=0, le=1, description="learning rate")
    epochs: float = Field(1.0, gt=0, description="training epochs")
    batch_size: int = Field(32, ge=2, description="training batch size")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="linear warm-up fraction")
    eval_steps: int = Field(25, ge=1, description="dev reranking evaluation (and checkpoint) every N steps")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept besides the best")
    resume: bool = Field(True, description="continue from the last complete checkpoint of the same params+inputs")
    dev_queries: int = Field(300, ge=10, description="random cap on dev queries (evaluator and calibration)")
    min_dev_examples: int = Field(100, ge=10, description="calibration needs at least this many dev queries "
                                                         "(with the gold concept among the candidates or not)")
    target_precision: float = Field(0.9, gt=0, lt=1, description="precision of an accepted top-1 hit that the "
                                                                 "per-branch threshold must reach on dev")
    min_branch_examples: int = Field(30, ge=1, description="branches with fewer dev queries use the global threshold")
    calibration: Literal["isotonic", "platt"] = Field("isotonic", description="calibrator whose probabilities "
                                                                              "the thresholds are set on")
    test_queries: int | None = Field(500, ge=10, description="random cap on held-out queries per language in "
                                                             "rerank_benchmark (CPU budget); null = all")
    batch_size_predict: int = Field(64, ge=1, description="pairs per cross-encoder forward pass")
    bootstrap_resamples: int = Field(1000, ge=100, le=100000, description="bootstrap CIs and paired test")
    seed: int = Field(7, ge=0, description="sampling, shuffling and initialisation seed")

    @model_validator(mode="after")
    def _negatives(self) -> "RerankParams":
        if self.hard_negatives + self.random_negatives == 0:
            raise ValueError("hard_negatives + random_negatives must be > 0 (a classifier needs negatives)")
        if self.hard_negatives >= self.k:
            raise ValueError(f"hard_negatives ({self.hard_negatives}) must be < k ({self.k})")
        return self
