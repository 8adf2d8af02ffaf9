"""DVC experiments: queued and watched, and read back without touching the workspace.

The one place that runs experiments through DVC's queue (``queue``: refused when the
downloaded inputs are not those dvc.lock records, ``check_inputs``; the git-ignored inputs
copied into the temporary copies, one worker so runs never share the two cores, the trainers'
checkpoints outside the copies so a killed run resumes when queued again, a poll line with
the running stage's progress), finds an experiment's commit by name and reads a file as that
commit has it (git-tracked, or a DVC output from the cache). scripts/ablation.py queues and
collects study arms with it, scripts/release_report.py the release run; reading keeps
working while another experiment runs in the workspace or the queue.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dvc.api
from dvc.exceptions import PathMissingError
from dvc_data.index.index import DataIndexDirError

from hpo_embed.common import UserError


def exp_rev(name: str, root: Path | str) -> str:
    """The commit of the newest experiment called ``name`` (refs/exps/<baseline>/<name>;
    ``dvc exp apply``'s stash refs are not experiments)."""
    refs = subprocess.run(["git", "for-each-ref", "--sort=-committerdate",
                           "--format=%(objectname) %(refname)", "refs/exps"],
                          cwd=root, check=True, capture_output=True, text=True).stdout
    for line in refs.splitlines():
        sha, ref = line.split()
        if ref.rsplit("/", 1)[-1] == name and not ref.startswith("refs/exps/apply/"):
            return sha
    raise UserError(f"no experiment named {name} (`dvc exp list` lists them)")


def read_at(rev: str, path: str, root: Path | str) -> bytes | None:
    """``path`` as commit ``rev`` has it: git-tracked, or a DVC output (a file, or a file
    inside an output folder) from the cache; None where that commit has no such file.
    An output the commit records but the local cache lacks is a UserError."""
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True)
    if shown.returncode == 0:
        return shown.stdout
    try:
        with dvc.api.open(path, repo=str(root), rev=rev, mode="rb") as f:
            return f.read()
    except PathMissingError:   # neither git nor DVC tracks it there (metrics/mine.json without mining)
        return None
    except (DataIndexDirError, FileNotFoundError) as e:   # recorded in dvc.lock, absent from the cache
        raise UserError(f"{path} at {rev[:7]}: not in the local DVC cache (`dvc pull` it, or run "
                        f"that experiment here): {e}") from e


# Git-ignored inputs a queued run needs in its temporary copy of the repository: the
# optional downloaded files (translate and benchmark deps) and the embedding caches.
EXTERNAL = "data/external"   # the downloaded inputs, DVC deps of translate, pairs, benchmark, ...
COPY_PATHS = (EXTERNAL, "data/benchmark/cache", "data/cache")
# under the repository: the HPO_EMBED_CHECKPOINT_ROOT of queued runs
QUEUE_CHECKPOINTS = Path("models") / "checkpoints-queue"


def sh(root: Path | str, *cmd: str, capture: bool = True, echo: bool = True) -> str:
    """Run ``cmd`` in ``root``; its stdout (``capture``; without it the output is dropped: a
    command that leaves a daemon behind, which would hold a pipe open). ``echo``: print the
    command first (off for the queue's polls)."""
    if echo:
        print("+", " ".join(cmd), flush=True)
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.run(cmd, cwd=root, check=True, text=True, stdout=out).stdout or ""


def set_args(settings: dict) -> list[str]:
    """``-S key=value`` in the override grammar `dvc exp run` parses (Hydra's: JSON lists
    pass; a mapping needs bare keys, ``{de: 8}``, and ``++`` to replace an empty ``{}``)."""
    def text(value) -> str:
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {text(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return json.dumps(value)
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return [arg for key, value in settings.items()
            for arg in ("-S", f"{'++' if isinstance(value, dict) else ''}{key}={text(value)}")]


def ignored(root: Path | str, paths: tuple[str, ...]) -> list[str]:
    """The git-ignored files and wholly ignored folders under ``paths``: what `--copy-paths`
    must name (DVC copies a folder only where the temporary copy has none, and these folders
    hold tracked READMEs)."""
    listing = sh(root, "git", "ls-files", "--others", "--ignored", "--exclude-standard", "--directory", "--", *paths)
    return [line.rstrip("/") for line in listing.splitlines() if line.strip()]


def check_inputs(root: Path | str) -> None:
    """A UserError when the optional downloaded inputs (data/external: the official
    translations, the phentrieve sets) differ from what dvc.lock records for the stages that
    read them: a run queued on other files (a fresh clone that never ran `make fetch-*`) would
    train without the German and French labels and score other queries than the committed
    results, and show it only hours later, when its arm cannot be paired."""
    status = json.loads(sh(root, "dvc", "status", "--json", echo=False) or "{}")
    off: dict[tuple[str, str], list[str]] = {}   # (path, state) -> the stages that read it
    for stage, entries in status.items():
        for entry in entries:
            for path, state in (entry.get("changed deps", {}) if isinstance(entry, dict) else {}).items():
                if path.startswith(f"{EXTERNAL}/"):
                    off.setdefault((path, state), []).append(stage)
    if off:
        paths = "; ".join(f"{path} ({state}; read by {', '.join(sorted(stages))})" for (path, state), stages in sorted(off.items()))
        raise UserError("not as dvc.lock records: " + paths + ": get the pinned files "
                        "(`make fetch-translations`, `make fetch-benchmarks`) or commit a `dvc repro` on the new ones")


def queue(runs: dict[str, tuple[dict, str | None]], root: Path | str, poll_s: float = 60.0) -> dict[str, str]:
    """Every run (experiment name -> its ``-S`` settings and the stage to run up to, None for
    the whole pipeline) into DVC's queue with COPY_PATHS copied along, one worker, then wait:
    a line each poll with every run's state and the running one's stage and progress. A
    finished experiment of the same name is replaced. The trainers keep their checkpoints
    under QUEUE_CHECKPOINTS (the worker inherits HPO_EMBED_CHECKPOINT_ROOT), so queueing a
    killed run again resumes it. Nothing is queued when check_inputs refuses. Returns each
    run's final state ("Success", "Failed", ...)."""
    root = Path(root)
    check_inputs(root)
    copy = [arg for path in ignored(root, COPY_PATHS) for arg in ("-C", path)]
    os.environ["HPO_EMBED_CHECKPOINT_ROOT"] = str(root / QUEUE_CHECKPOINTS)
    known = sh(root, "dvc", "exp", "list", "--name-only")
    earlier = task_ids(sh(root, "dvc", "queue", "status"), set(runs))   # failed tries of these runs keep their rows
    for name, (settings, target) in runs.items():
        sh(root, "dvc", "exp", "remove", name) if name in known.split() else None
        sh(root, "dvc", "exp", "run", "--queue", "-n", name, *copy, *set_args(settings), *([target] if target else []))
    sh(root, "dvc", "queue", "start", "-j", "1", capture=False)   # its worker daemon outlives the call
    while True:
        states = queue_states(sh(root, "dvc", "queue", "status", echo=False), set(runs), earlier)
        line = []
        for name, state in sorted(states.items()):
            where = progress(sh(root, "dvc", "queue", "logs", name, echo=False)) if state == "Running" else None
            line.append(f"{name} {state}" + (f" ({where})" if where else ""))
        print("queue:", ", ".join(line), flush=True)
        if all(s not in ("Queued", "Running") for s in states.values()):
            break
        time.sleep(poll_s)
    failed = sorted(n for n, s in states.items() if s != "Success")
    if failed:
        print(f"warning: {failed} did not succeed (`dvc queue logs <name>` says why)", file=sys.stderr)
    return states


STAGE = re.compile(r"^Running stage '([^']+)'", re.M)
BAR = re.compile(r"^(?:(.*?):)? *\d+%\|[^|\n]*\| *(\d+)/(\d+) \[([\d:]+)<([\d:?]+)", re.M)


def progress(log: str) -> str | None:
    """Where a running experiment is, from its `dvc queue logs`: the stage DVC runs and its
    last progress bar ("train: 105/962, 13:20 elapsed, 1:53:01 left"; the encoder's inner
    "Batches" bars are passed over); None before the first stage."""
    log = log.replace("\r", "\n")   # tqdm redraws a bar in place
    stages = list(STAGE.finditer(log))
    if not stages:
        return None
    stage = stages[-1]
    bars = [b for b in BAR.finditer(log, stage.end()) if b.group(1) != "Batches"]
    if not bars:
        return stage.group(1)
    label, done, total, elapsed, left = bars[-1].groups()
    return f"{stage.group(1)}: {label + ' ' if label else ''}{done}/{total}, {elapsed} elapsed, {left} left"


def queue_rows(status: str, names: set[str]) -> list[tuple[str, str, str]]:
    """(task id, name, state) of the named experiments in `dvc queue status`'s table
    (Task Name Created Status)."""
    return [(w[0], w[1], w[-1]) for w in map(str.split, status.splitlines()) if len(w) >= 3 and w[1] in names]


def queue_states(status: str, names: set[str], ignore: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
    """Status of each named experiment, skipping the tasks in ``ignore`` (an earlier,
    finished try of the same run keeps its row)."""
    return {name: state for task, name, state in queue_rows(status, names) if task not in ignore}


def task_ids(status: str, names: set[str]) -> set[str]:
    """The task ids of the named experiments in `dvc queue status`'s table."""
    return {task for task, _, _ in queue_rows(status, names)}
