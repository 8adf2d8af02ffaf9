"""Small helpers shared by every stage: the user-facing error type, the stage entry
point wrapper, atomic file writes and the repository paths."""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
MODELS = ROOT / "models"
METRICS = ROOT / "metrics"

log = logging.getLogger("hpo_embed")


class UserError(Exception):
    """Bad input or configuration. Printed as one line, no traceback, exit status 2."""


def run_stage(main: Callable[[], Any]) -> None:
    """Run a stage's ``main`` and turn ``UserError`` into a one-line message.

    Anything unexpected keeps its traceback: that is a bug, not bad input.
    """
    logging.basicConfig(
        level=os.environ.get("HPO_EMBED_LOGLEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; rerun to continue", file=sys.stderr)
        sys.exit(130)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename,
    so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any) -> None:
    """Atomically write ``obj`` as stable, human-readable JSON (sorted keys)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def hpo_id_to_filename(hpo_id: str) -> str:
    """``HP:0001369`` -> ``HP_0001369.json``."""
    return hpo_id.replace(":", "_") + ".json"
