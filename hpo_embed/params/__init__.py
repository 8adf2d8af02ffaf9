"""Load, cast and validate ``params.yaml`` (pydantic v2 models).

``params.yaml`` is the only place knobs live. Every key is declared here, in one model
per section, with its type, range and choices; loading casts the values in pydantic's
lax mode (``dvc exp run -S lr=1e-5`` writes ``1e-05``, which PyYAML reads as a *string*;
``-S key=a,b`` writes a list as one string) and fails with one line naming the key for
anything unknown, ill-typed or out of range.

The models live in ``fields`` (building blocks), ``sections`` (the pipeline's stages) and
``features`` (mine, rerank); this module holds the whole file's model, the one-line
messages and loading. Check a params file by hand with ``python -m hpo_embed.params [params.yaml]``.
"""
from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hpo_embed.common import ROOT, UserError
from hpo_embed.params.features import MineParams, RerankParams
from hpo_embed.params.fields import Float, Section, spec
from hpo_embed.params.sections import (IN_BATCH_LOSSES, PAIR_TYPES, TRAIN_LOSSES, TRANSLATE_LANGUAGES, BenchmarkParams,
                                       HpoParams, PairsParams, QuantizeParams, TrainParams, TranslateParams)

__all__ = ["IN_BATCH_LOSSES", "PAIR_TYPES", "TRAIN_LOSSES", "TRANSLATE_LANGUAGES", "BenchmarkParams", "HpoParams",
           "MineParams", "PairsParams", "Params", "QuantizeParams", "RerankParams", "SECTIONS", "TrainParams",
           "TranslateParams", "load_params", "parse_params"]

PARAMS_FILE = ROOT / "params.yaml"


SECTIONS: dict[str, type[Section]] = {
    "hpo": HpoParams,
    "translate": TranslateParams,
    "pairs": PairsParams,
    "train": TrainParams,
    "quantize": QuantizeParams,
    "benchmark": BenchmarkParams,
    "mine": MineParams,
    "rerank": RerankParams,
}


class Params(BaseModel):
    """The whole file: ``lr`` at the top level (so that ``dvc exp run -S lr=1e-5`` works
    exactly as typed) and one section per stage."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: Float = spec(2e-5, gt=0, max=1.0, doc="training learning rate")
    hpo: HpoParams = Field(default_factory=HpoParams)
    translate: TranslateParams = Field(default_factory=TranslateParams)
    pairs: PairsParams = Field(default_factory=PairsParams)
    train: TrainParams = Field(default_factory=TrainParams)
    quantize: QuantizeParams = Field(default_factory=QuantizeParams)
    benchmark: BenchmarkParams = Field(default_factory=BenchmarkParams)
    mine: MineParams = Field(default_factory=MineParams)
    rerank: RerankParams = Field(default_factory=RerankParams)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: ({} if k in SECTIONS and v is None else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _across_sections(self) -> "Params":
        known = ["en", *self.translate.languages]
        absent = [lang for lang in self.benchmark.languages if lang not in known]
        if absent:
            raise ValueError(f"benchmark.languages: {', '.join(absent)} is not a language of this run "
                             f"(en + translate.languages: {', '.join(known)}), so it has no held-out queries")
        absent = [lang for lang in self.train.language_weights if lang not in known]
        if absent:
            raise ValueError(f"train.language_weights: {', '.join(absent)} is not a language of this run "
                             f"(en + translate.languages: {', '.join(known)})")
        return self


# --------------------------------------------------------------------------- messages

def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _describe(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"a mapping of {_describe(k)} to {_describe(v)}"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _declared(loc: tuple) -> tuple[str, Any, list[str], Any]:
    """The dotted key of a pydantic error location, the declared type there, the known
    keys of the enclosing model and the field's declaration."""
    tp: Any = Params
    key, known, decl = "", sorted(Params.model_fields), None
    for part in loc:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            known = sorted(tp.model_fields)
            field = decl = tp.model_fields.get(str(part))
            tp = field.annotation if field is not None else None
            key = f"{key}.{part}" if key else str(part)
            continue
        while typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        if typing.get_origin(tp) is list and isinstance(part, int):
            tp, key = typing.get_args(tp)[0], f"{key}[{part}]"
        elif typing.get_origin(tp) is dict:
            tp, key = typing.get_args(tp)[1], f"{key}.{part}"
        else:
            key = f"{key}.{part}"
    return key, tp, known, decl


def _one_line(exc: ValidationError, origin: str = "params.yaml") -> UserError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("int", "float", "str", "bool",
                                                                                       "list", "dict", "none"))))
    key, tp, known, decl = _declared(loc)
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        where = "top-level keys: " if len(loc) == 1 else ""
        return UserError(f"{origin}: {key}: unknown parameter (known: {where}{', '.join(known) or 'none'})")
    if kind == "value_error" and (not loc or (len(loc) == 1 and loc[0] in SECTIONS)):
        # a cross-field check (a section's or the whole file's model_validator): its message
        # starts with the key it is about, relative to the section
        msg = err["msg"].removeprefix("Value error, ")
        head, sep, rest = msg.partition(": ")
        if sep and loc and head.split(".")[0] in SECTIONS[loc[0]].model_fields:
            return UserError(f"{origin}: {loc[0]}.{head}: {rest}")
        return UserError(f"{origin}: {key + ': ' if key else ''}{msg}")
    if kind == "literal_error":
        allowed = typing.get_args(tp) if typing.get_origin(tp) is Literal else ()
        key = re.sub(r"\[\d+\]$", "", key)   # a list item: the message names the list
        return UserError(f"{origin}: {key}: {value!r} is not one of: {', '.join(map(str, allowed))}")
    if kind == "listed_twice":
        return UserError(f"{origin}: {key}: {err['msg']}")
    if kind in ("greater_than", "greater_than_equal", "less_than_equal", "less_than"):
        op, bound = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
                     "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}[kind]
        declared = next((getattr(m, bound) for m in getattr(decl, "metadata", []) if hasattr(m, bound)), ctx[bound])
        return UserError(f"{origin}: {key}: must be {op} {declared}, got {value}")
    return UserError(f"{origin}: {key}: expected {_describe(tp)}, got {value!r}")


# --------------------------------------------------------------------------- loading

def parse_params(raw: Any, origin: str = "params.yaml") -> Params:
    """Validate an already-loaded YAML mapping."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: expected a mapping at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise _one_line(exc, origin) from None
    return params


def load_params(path: Path | str | None = None) -> Params:
    """Read and validate the whole params file (default: the repository's params.yaml)."""
    path = Path(path) if path is not None else PARAMS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: params file not found") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if raw is None:   # DVC refuses an empty params file too (the stages' params are missing)
        raise UserError(f"{path}: empty params file (every stage reads its section from it; "
                        "`git checkout params.yaml` restores the defaults)")
    return parse_params(raw, str(path))


