"""Parameters of hard-negative mining (``mine:`` in params.yaml).

``MineParams`` = the mining fields (``MiningParams``, read by the mine stage and by the
iterative round inside train) + the train-side fields (``HardNegativeTrainParams``, read
by the train stage only). One flat ``mine:`` section so ``dvc exp run -S mine.x=...``
works as typed; the train-side fields can move to ``train:`` when the params are merged.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _yaml_scalars(data):
    """``dvc exp run -S mine.x=...`` writes strings: 'null' -> None, 'a,b' -> [a, b] for lists."""
    if not isinstance(data, dict):
        return data
    out = {}
    for k, v in data.items():
        if isinstance(v, str) and v.strip().lower() in ("null", "none", "~"):
            v = None
        elif isinstance(v, str) and k in ("sources", "ontology_relations"):
            v = [x.strip() for x in v.strip().strip("[]").split(",") if x.strip()]
        out[k] = v
    return out


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _from_cli_strings(cls, data):
        return _yaml_scalars(data)


class MiningParams(_Section):

    sources: list[Literal["ontology", "model"]] = Field(
        default_factory=lambda: ["ontology", "model"],
        description="where hard negatives come from: ontology relatives (mine.ontology_relations) and/or "
                    "the nearest corpus texts under the base model; with both, anchors alternate sources")
    ontology_relations: list[Literal["siblings", "cousins"]] = Field(
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

    @field_validator("sources", "ontology_relations")
    @classmethod
    def _unique(cls, v: list) -> list:
        dup = [x for i, x in enumerate(v) if x in v[:i]]
        if dup:
            raise ValueError(f"{dup[0]!r} is listed twice")
        return v

    @model_validator(mode="after")
    def _range(self) -> "MiningParams":
        if self.range_min >= self.range_max:
            raise ValueError(f"range_min ({self.range_min}) must be < range_max ({self.range_max})")
        if "ontology" in self.sources and not self.ontology_relations and not self.ontology_family:
            raise ValueError("sources has ontology but ontology_relations is empty and ontology_family false")
        return self


class HardNegativeTrainParams(_Section):

    easy_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="share of rows whose negatives are easy (random other concept) "
                                         "instead of hard, against forgetting; 0.34 ~ 2 hard : 1 easy")
    hardness_mode: Literal["in_batch_negatives", "hard_negatives", "all_negatives"] | None = Field(
        None, description="mnrl / cached_mnrl hardness weighting (sentence-transformers); null = off")
    hardness_strength: float = Field(0.0, ge=0.0, description="alpha of the hardness weighting (5-9 in the papers)")
    triplet_distance: Literal["cosine", "euclidean"] = Field(
        "cosine", description="triplet loss distance; the margin is train.margin (null = 0.1 for cosine)")


class MineParams(MiningParams, HardNegativeTrainParams):
    """The whole ``mine:`` section."""

    def mining(self) -> MiningParams:
        return MiningParams(**{k: getattr(self, k) for k in MiningParams.model_fields})


def validate_section(raw, origin: str = "params.yaml") -> MineParams:
    """``MineParams`` from the raw ``mine:`` mapping; a bad value -> UserError naming the key."""
    from pydantic import ValidationError

    from stages.common import UserError
    try:
        return MineParams.model_validate(raw or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in ("mine", *err["loc"]))
        raise UserError(f"{origin}: {key}: {err['msg']} (got {err.get('input')!r})") from None
