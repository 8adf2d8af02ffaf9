"""Checkpoints and resume, for every trainer of the project (the bi-encoder, its first
round when mining iteratively, and the cross-encoder reranker).

A run's identity is its *fingerprint* (the params that change what is trained plus the
bytes of its input files); checkpoints of another fingerprint are removed, never resumed.
A checkpoint is resumed only when it is *complete*: every file the Trainer wrote can be
read back (JSON parses, torch zip archives pass their CRC check, safetensors files are as
long as their header says). A run killed while saving, or a file damaged later, makes the
checkpoint incomplete: it is removed with one warning and the previous one is tried. The
newest checkpoint is found by transformers' ``get_last_checkpoint``.

Where: the stage's ``--checkpoints`` folder, or, when the environment names a root
(``HPO_EMBED_CHECKPOINT_ROOT``, absolute), ``<root>/<fingerprint>``. The root is for runs
in a throw-away workspace: an arm of ``dvc exp run --queue`` runs in a temporary copy of the
repository that a killed worker takes with it, so the queue runner points every arm at one
root outside it and a requeued arm finds its own checkpoints by fingerprint and resumes. A
run that finishes removes its folder under the root (its model is in the DVC cache).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from hpo_embed.common import UserError, write_json

log = logging.getLogger("hpo_embed.checkpoints")

RUN_FILE = "run.json"   # {"fingerprint": ...} of the run whose checkpoints the folder holds
ROOT_ENV = "HPO_EMBED_CHECKPOINT_ROOT"   # checkpoints under <root>/<fingerprint> (queued experiments)
_STEP = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def fingerprint(ident: dict[str, Any], files: list[Path]) -> str:
    """16 hex digits naming a run: ``ident`` (JSON, sorted keys) and each input file's
    name and SHA-256 (a missing file counts as absent, not as an error)."""
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode())
    for f in files:
        h.update(f.name.encode())
        h.update(hashlib.sha256(f.read_bytes()).digest() if f.is_file() else b"-")
    return h.hexdigest()[:16]


def run_folder(folder: Path, fp: str) -> Path:
    """The folder a run of fingerprint ``fp`` keeps its checkpoints in: ``folder`` (the
    stage's ``--checkpoints``), or ``<root>/<fp>`` when ``HPO_EMBED_CHECKPOINT_ROOT`` is set."""
    root = os.environ.get(ROOT_ENV)
    if not root:
        return folder
    if not Path(root).is_absolute():
        raise UserError(f"{ROOT_ENV}={root}: must be an absolute path (the stage runs in another directory)")
    return Path(root) / fp


def finish(folder: Path) -> None:
    """After a run has published its model: remove its folder when it lies under the
    ``HPO_EMBED_CHECKPOINT_ROOT`` root (the stage's own ``--checkpoints`` folder stays)."""
    root = os.environ.get(ROOT_ENV)
    if root and folder.parent == Path(root) and folder.is_dir():
        shutil.rmtree(folder)
        log.info("removed %s (the run finished; its model is published)", folder)


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "shorter than its header"
        n = struct.unpack("<Q", head)[0]
        if n > size - 8:
            return "header longer than the file"
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            return "unreadable header"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return None if size == 8 + n + end else f"{size} bytes, its header describes {8 + n + end}"


def _torch_zip_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError) as exc:
        return f"not a complete torch archive ({exc})"
    return f"CRC mismatch in {bad}" if bad else None


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (``"<file>: <what>"``), or None when it can."""
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json: missing (the Trainer writes it last)"
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = f.relative_to(folder)
        try:
            if f.suffix == ".json":
                json.loads(f.read_text(encoding="utf-8"))
                problem = None
            elif f.suffix == ".safetensors":
                problem = _safetensors_problem(f)
            elif f.suffix in (".pt", ".pth", ".bin"):
                problem = _torch_zip_problem(f)
            else:
                continue
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            problem = f"unreadable ({type(exc).__name__}: {exc})"
        if problem:
            return f"{name}: {problem}"
    return None


def checkpoints(folder: Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``folder``, newest (largest N) first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in folder.iterdir() if d.is_dir() and (m := _STEP.match(d.name))]
    return [d for _, d in sorted(found, reverse=True)]


def last_complete_checkpoint(folder: Path, clean: bool) -> Path | None:
    """The newest complete checkpoint in ``folder``. A newer incomplete one is removed with
    one warning line when ``clean`` and the next newest tried; without ``clean`` (the other
    ranks of a distributed run, after rank 0 has cleaned) an incomplete newest means none."""
    while folder.is_dir() and (newest := get_last_checkpoint(str(folder))) is not None:
        d = Path(newest)
        problem = checkpoint_problem(d)
        if problem is None:
            return d
        if not clean:
            return None
        log.warning("checkpoint %s is incomplete (%s): removed; resuming from the previous complete one, "
                    "if any", d, problem)
        shutil.rmtree(d)
    return None


def discard_other_runs(folder: Path, fp: str, resume: bool, resume_param: str) -> None:
    """Remove every checkpoint in ``folder`` unless it belongs to the run ``fp`` and
    ``resume`` is on; record ``fp`` as the folder's run."""
    run_file = folder / RUN_FILE
    prev = json.loads(run_file.read_text()).get("fingerprint") if run_file.is_file() else None
    stale = checkpoints(folder)
    if stale and (not resume or prev != fp):
        log.warning("removing %d checkpoint(s) in %s: %s", len(stale), folder,
                    f"{resume_param} is false" if not resume else "params or inputs changed")
        for d in stale:
            shutil.rmtree(d)
    if prev != fp:
        write_json(run_file, {"fingerprint": fp})


def prepare(folder: Path, fp: str, resume: bool, resume_param: str) -> Path | None:
    """Single-process runs: discard other runs' and incomplete checkpoints; the checkpoint
    to resume from (None = start fresh)."""
    folder.mkdir(parents=True, exist_ok=True)
    discard_other_runs(folder, fp, resume, resume_param)
    last = last_complete_checkpoint(folder, clean=True)
    return last if resume else None
