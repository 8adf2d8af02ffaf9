"""Finished DVC experiments, read back without touching the workspace.

The one place that finds an experiment's commit by name and reads a file as that commit has
it (git-tracked, or a DVC output from the cache). scripts/ablation.py collects study arms
with it, scripts/release_report.py the release run; both keep working while another
experiment runs in the workspace or the queue.
"""
from __future__ import annotations

import subprocess
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
