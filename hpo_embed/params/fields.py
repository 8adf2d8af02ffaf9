"""The building blocks of every params section: a field with its range and doc, numbers that
are not booleans, choices as ``Literal`` (lists without repeats), and ``Section``, which casts
the strings ``dvc exp run -S`` writes."""
from __future__ import annotations

import types
import typing
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError, PydanticUndefined


def spec(default: Any = PydanticUndefined, *, default_factory: Any = None,
         min: float | None = None, max: float | None = None, gt: float | None = None, doc: str = "") -> Any:
    """A field with its range (pydantic ``ge``/``le``/``gt``) and its documentation."""
    if default_factory is not None:
        return Field(default_factory=default_factory, ge=min, le=max, gt=gt, description=doc)
    return Field(default, ge=min, le=max, gt=gt, description=doc)


def _no_repeats(values: list) -> list:
    dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if dup is not None:
        raise PydanticCustomError("listed_twice", "{item} is listed twice", {"item": repr(dup)})
    return values


T = TypeVar("T")
UniqueList = Annotated[list[T], AfterValidator(_no_repeats)]   # a list whose items are listed once


def _number(value: Any, integer: bool) -> Any:
    """Booleans are not numbers; ``"1e3"`` is the integer 1000 (as the old caster took it)."""
    if isinstance(value, bool):
        raise ValueError("bool")
    if integer and isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return value
        return int(f) if f.is_integer() else value
    return value


Int = Annotated[int, BeforeValidator(lambda v: _number(v, True))]
IntChoice = Annotated[T, BeforeValidator(lambda v: _number(v, True))]   # IntChoice[Literal[16, 32]]: "32" is 32


Float = Annotated[float, BeforeValidator(lambda v: _number(v, False))]


_NULL = ("null", "none", "~")


class Section(BaseModel):
    """A params.yaml section: unknown keys rejected, values cast in lax mode, frozen."""
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _command_line_strings(cls, data: Any) -> Any:
        """``dvc exp run -S`` strings: ``null`` for an optional value, ``a,b`` for a list."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, f in cls.model_fields.items():
            v = out.get(name)
            if not isinstance(v, str):
                continue
            ann = f.annotation
            args = typing.get_args(ann)
            optional = typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in args
            inner = next(a for a in args if a is not type(None)) if optional else ann
            while typing.get_origin(inner) is Annotated:
                inner = typing.get_args(inner)[0]
            if optional and v.strip().lower() in _NULL:
                out[name] = None
            elif typing.get_origin(inner) is list:
                items = v.strip().strip("[]")
                out[name] = [s.strip() for s in items.split(",") if s.strip()]
        return out
