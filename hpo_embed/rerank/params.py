"""``RerankParams``: the ``rerank:`` section of params.yaml (pydantic v2, strict keys).

Validated by ``stages.params`` through ``parse_section`` so that a bad key fails the
same way as every other section: one line naming ``rerank.<key>``.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class RerankParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

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


def describe_error(exc: ValidationError, prefix: str = "rerank") -> str:
    """The first pydantic error as one line: ``params.yaml: rerank.k: <message>, got <value>``."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    key = f"{prefix}.{loc}" if loc else prefix
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f"unknown parameter (known: {', '.join(sorted(RerankParams.model_fields))})"
        return f"params.yaml: {key}: {msg}"
    return f"params.yaml: {key}: {msg}" + (f", got {err.get('input')!r}" if loc else "")


def parse_section(raw: Any, error_type: type[Exception] = ValueError) -> RerankParams:
    """Validate the raw ``rerank:`` mapping (None = every default); ``error_type`` carries
    the one-line message (stages.params passes UserError)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise error_type(f"params.yaml: rerank: expected a mapping, got {raw!r}")
    # `dvc exp run -S rerank.max_train_examples=null` writes the string 'null'
    raw = {k: (None if isinstance(v, str) and v.strip().lower() in ("null", "none", "~") else v)
           for k, v in raw.items()}
    try:
        return RerankParams.model_validate(raw)
    except ValidationError as exc:
        raise error_type(describe_error(exc)) from None
