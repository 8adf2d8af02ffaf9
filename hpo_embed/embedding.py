"""Sentence embeddings of a model, cached on disk: one model hash, one encoder, one cache.

Every stage that encodes texts with a bi-encoder (benchmark, mine, rerank_candidates)
calls ``encode_cached``; the cache file is named by ``cache_file`` from the model's
``model_hash`` and the texts, so a changed model or text list can never hit a stale file.

- ``encode``: a plain ``model.encode`` as phentrieve calls it (the model's saved default
  prompt applies, its query/document prompts do not), L2-normalised float32;
- ``encode_cached``: longest texts first, in chunks of ``CHUNK``; each chunk is saved
  atomically under ``<file>.parts/`` so a killed run resumes from the last finished
  chunk; a truncated or corrupt cache file is logged and encoded again.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from hpo_embed.common import atomic_write_bytes

log = logging.getLogger("hpo_embed.embedding")

CHUNK = 2048   # texts encoded between two cache checkpoints


def text_hash(*parts: Any) -> str:
    """sha256 of JSON-serialisable parts (lists of texts, ids, options)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def model_hash(path: str | Path, options: Any = None, onnx_file: str | None = None) -> str:
    """Identity of an encoder: the bytes of every file in its folder (hidden files and
    ONNX files other than ``onnx_file`` left out: they do not change its embeddings) and
    the load ``options`` (token limit, backend, ...). A hub id hashes its name."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    folder = Path(path)
    if not folder.is_dir():
        h.update(str(path).encode())
        return h.hexdigest()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder).as_posix()
        if rel.endswith(".onnx") and rel != onnx_file or rel.startswith(".") or "/." in rel:
            continue
        h.update(rel.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def cache_file(folder: Path | str | None, model_key: str, texts: list[str], tag: str) -> Path | None:
    """``<folder>/<model>-<tag>-<texts>.npy`` (None without a folder: no cache)."""
    if folder is None:
        return None
    return Path(folder) / f"{model_key[:16]}-{tag}-{text_hash(texts)[:16]}.npy"


def prune(folder: Path | str, keep: set[str]) -> None:
    """Remove the cache files in ``folder`` not named in ``keep`` (older models or texts)."""
    for f in Path(folder).glob("*.npy") if Path(folder).is_dir() else []:
        if f.name not in keep:
            f.unlink(missing_ok=True)


def encode(model, texts: list[str], batch_size: int, progress: bool = False) -> np.ndarray:
    """L2-normalised float32 embeddings by a plain ``model.encode``."""
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension()), dtype=np.float32)
    return np.asarray(model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                   convert_to_numpy=True, normalize_embeddings=True), dtype=np.float32)


def save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def load_npy(path: Path, rows: int | None = None) -> np.ndarray | None:
    """A cached embedding array, or None (logged) when it is unreadable, not a 2-D float32
    array or not ``rows`` long: the caller encodes again."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        log.warning("%s: unreadable embedding cache (%s); encoding again", path, str(exc).splitlines()[0][:120])
        return None
    if arr.ndim != 2 or arr.dtype != np.float32:
        log.warning("%s: unexpected embedding cache %s %s; encoding again", path, arr.dtype, arr.shape)
        return None
    return arr if rows is None or arr.shape[0] == rows else None


def encode_cached(model, texts: list[str], file: Path | None, batch_size: int, desc: str = "encode") -> np.ndarray:
    """``encode`` of ``texts`` through the cache ``file`` (None: no cache). ``model`` is a
    SentenceTransformer or a no-argument callable returning one, called only when
    something must be encoded."""
    get_model: Callable = model if callable(model) and not hasattr(model, "encode") else (lambda: model)
    if file is not None and file.is_file():
        arr = load_npy(file, len(texts))
        if arr is not None:
            return arr
    parts = file.with_name(file.name + ".parts") if file is not None else None
    if parts is not None:
        parts.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    chunks = []
    with tqdm(total=len(texts), desc=desc, unit="text", leave=False) as bar:
        for c, start in enumerate(range(0, len(order), CHUNK)):
            idx = order[start:start + CHUNK]
            part = parts / f"{c:05d}.npy" if parts is not None else None
            emb = load_npy(part, len(idx)) if part is not None and part.is_file() else None
            if emb is None:
                emb = encode(get_model(), [texts[i] for i in idx], batch_size)
                if part is not None:
                    save_npy(part, emb)
            chunks.append(emb)
            bar.update(len(idx))
    if not chunks:
        return encode(get_model(), [], batch_size)
    out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
    out[np.asarray(order)] = np.concatenate(chunks)
    if file is not None:
        save_npy(file, out)
        shutil.rmtree(parts, ignore_errors=True)
    return out
