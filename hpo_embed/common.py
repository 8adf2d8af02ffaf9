"""Small helpers shared by every stage: the user-facing error type, the stage entry
point wrapper and atomic publishing of files and folders.

``ROOT`` (the repository) only resolves relative paths written in params.yaml (model
folders, source files); every input and output path of a stage comes from its dvc.yaml
``cmd``."""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import unicodedata
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("hpo_embed")


class UserError(Exception):
    """Bad input or configuration. Printed as one line, no traceback, exit status 2."""


# OSError numbers that describe the machine, not the code: a read-only or full disk, a
# quota, a missing permission. A stage stops on them with one line naming the path.
ENVIRONMENT_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM}


def environment_error(exc: OSError, path: Path | str | None = None) -> UserError | None:
    """A one-line UserError for an OSError caused by the environment (see
    ``ENVIRONMENT_ERRNOS``), naming ``path`` (else the error's own file name) and the
    cause; None for any other OSError (a bug keeps its traceback)."""
    code = exc.errno
    if code is None:   # pyarrow and others raise OSError with the cause in the message only
        code = next((c for c in (errno.EROFS, errno.ENOSPC, errno.EDQUOT) if os.strerror(c) in str(exc)), None)
    if code not in ENVIRONMENT_ERRNOS:
        return None
    where = path if path is not None else (exc.filename or str(exc).splitlines()[0][:200])
    cause = (exc.strerror if exc.errno is not None else None) or os.strerror(code)
    hint = {errno.ENOSPC: "free some space and rerun", errno.EDQUOT: "free some space and rerun",
            errno.EROFS: "make it writable and rerun"}.get(code, "fix the permissions and rerun")
    return UserError(f"{where}: cannot write: {cause} [{errno.errorcode.get(code, code)}]; {hint}")


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
    except OSError as exc:
        err = environment_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename,
    so a reader never sees a half-written file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                Path(tmp).unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(exc, OSError):
            err = environment_error(exc, path)
            if err is not None:
                raise err from None
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any) -> None:
    """Atomically write ``obj`` as stable, human-readable JSON (sorted keys)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_parquet(path: Path | str, table: Any, compression: str = "snappy") -> None:
    """Atomically write a pyarrow ``Table`` as a Parquet file."""

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp(out: Path) -> list[Path]:
    """Remove the ``.<out>.tmp-<pid>-*`` / ``.<out>.old-<pid>`` siblings that a killed run
    left behind (a run that is still alive keeps its own); return what was removed."""
    removed = []
    for p in sorted(out.parent.glob(f".{out.name}.tmp-*")) + sorted(out.parent.glob(f".{out.name}.old-*")):
        m = re.match(rf"^\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)", p.name)
        if m and int(m.group(1)) != os.getpid() and _pid_alive(int(m.group(1))):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    if removed:
        log.info("removed %d temporary folder(s) of an interrupted run: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def temp_sibling(out: Path | str) -> Path:
    """An empty path ``.<name>.tmp-<pid>`` beside ``out`` to build a folder in before
    ``publish_dir`` swaps it into ``out``; temporary folders that killed runs left beside
    ``out`` are removed first (``remove_stale_temp``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(out)
    return out.with_name(f".{out.name}.tmp-{os.getpid()}")



def publish_dir(tmp: Path | str, out: Path | str) -> None:
    """Swap the finished folder ``tmp`` into ``out`` (same file system): ``out`` is renamed
    aside, ``tmp`` renamed into place, the old one removed; a reader never sees a
    half-written folder."""
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def normalize(text: str | None) -> str:
    """NFC and collapsed whitespace; ``""`` for None."""
    if not text:
        return ""
    return " ".join(unicodedata.normalize("NFC", text).split())


def case_key(text: str | None) -> str:
    """The identity of a text wherever two texts are compared (a training text with a benchmark
    case, a query with an indexed text): NFC, collapsed whitespace, case-folded."""
    return normalize(text).casefold()


def hpo_id_to_filename(hpo_id: str) -> str:
    """``HP:0001369`` -> ``HP_0001369.json``."""
    return hpo_id.replace(":", "_") + ".json"
