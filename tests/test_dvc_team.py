"""The team workflow of docs/team.md, run on a TINY git+DVC project in tmp_path (never the
real pipeline): a local-directory DVC remote (push, clone, pull, status) and queued
`dvc exp run --queue -S lr=...` sweeps run by `dvc queue start -j 1`."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

DVC = Path(sys.executable).with_name("dvc")
pytestmark = pytest.mark.skipif(not DVC.exists(), reason="dvc not installed in this environment")

# One line: read lr from params.yaml, write out/model.txt and metrics.json (score = 1 - lr).
STAGE = ('import json, os, yaml; lr = float(yaml.safe_load(open("params.yaml"))["lr"]); '
         'os.makedirs("out", exist_ok=True); open("out/model.txt", "w").write(f"model lr={lr}\\n"); '
         'json.dump({"score": round(1 - lr, 4)}, open("metrics.json", "w"))\n')
QUEUE_TIMEOUT_S = 120


def env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def sh(cmd: list[str], cwd: Path, timeout: float = 60, check: bool = True) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def dvc(*args: str, cwd: Path, **kw) -> str:
    return sh([str(DVC), *args], cwd, **kw)


def git(*args: str, cwd: Path, **kw) -> str:
    return sh(["git", "-c", "commit.gpgsign=false", *args], cwd, **kw)


def make_project(root: Path) -> Path:
    """git init + dvc init + params.yaml (lr: 0.1) + one-stage dvc.yaml, committed."""
    proj = root / "proj"
    proj.mkdir()
    git("init", "-q", "-b", "main", cwd=proj)
    dvc("init", "-q", cwd=proj)
    (proj / "params.yaml").write_text("lr: 0.1\n")
    (proj / "train.py").write_text(STAGE)
    (proj / "dvc.yaml").write_text(
        "stages:\n"
        "  train:\n"
        f"    cmd: {json.dumps(shlex.quote(sys.executable) + ' train.py')}\n"
        "    deps: [train.py]\n"
        "    params: [lr]\n"
        "    outs: [out]\n"
        "    metrics:\n"
        "      - metrics.json:\n"
        "          cache: false\n")
    git("add", "-A", cwd=proj)
    git("commit", "-qm", "tiny pipeline", cwd=proj)
    return proj


def test_remote_push_clone_pull(tmp_path):
    proj = make_project(tmp_path)
    dvc("remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=proj)
    dvc("repro", cwd=proj)
    git("add", "-A", cwd=proj)
    git("commit", "-qm", "repro + remote", cwd=proj)
    assert "2 files pushed" in dvc("push", cwd=proj)   # the out/ dir entry + model.txt
    original = (proj / "out" / "model.txt").read_text()
    assert original == "model lr=0.1\n"

    clone = tmp_path / "clone"
    git("clone", "-q", str(proj), str(clone), cwd=tmp_path)
    assert not (clone / "out").exists()                     # cached outs are not in git...
    assert json.loads((clone / "metrics.json").read_text()) == {"score": 0.9}  # ...cache: false ones are
    dvc("pull", cwd=clone)
    assert (clone / "out" / "model.txt").read_text() == original
    assert "Data and pipelines are up to date." in dvc("status", cwd=clone)
    assert json.loads(dvc("status", "--json", cwd=clone)) == {}
    assert json.loads(dvc("status", "--cloud", "--json", cwd=clone)) == {}   # remote has it all


def queue_rows(proj: Path) -> dict[str, str]:
    """{experiment name: status} from `dvc queue status` (it has no --json in dvc 3.67)."""
    rows = {}
    for line in dvc("queue", "status", cwd=proj).splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0] != "Task" and not line.startswith("Worker"):
            rows[parts[1]] = parts[-1]
    return rows


def experiments(show: list[dict]) -> dict[str, tuple[float, float]]:
    """{experiment name: (lr, score)} from `dvc exp show --json`."""
    out = {}
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            data = exp["revs"][0]["data"]
            out[exp["name"]] = (float(data["params"]["params.yaml"]["data"]["lr"]),
                                data["metrics"]["metrics.json"]["data"]["score"])
    return out


def test_queued_sweep(tmp_path):
    proj = make_project(tmp_path)
    dvc("remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=proj)
    dvc("repro", cwd=proj)
    git("add", "-A", cwd=proj)
    git("commit", "-qm", "baseline lr=0.1", cwd=proj)

    dvc("exp", "run", "--queue", "-n", "lr-0.2", "-S", "lr=0.2", cwd=proj)
    dvc("exp", "run", "--queue", "-n", "lr-0.3", "-S", "lr=0.3", cwd=proj)
    assert queue_rows(proj) == {"lr-0.2": "Queued", "lr-0.3": "Queued"}
    try:
        # Not through pipes: the worker that `queue start` spawns inherits them, and reading
        # them to EOF would wait for the whole queue.
        with open(tmp_path / "queue-start.log", "w") as log:
            subprocess.run([str(DVC), "queue", "start", "-j", "1"], cwd=proj, env=env(), check=True,
                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=60)
        deadline = time.monotonic() + QUEUE_TIMEOUT_S
        while True:
            rows = queue_rows(proj)
            if rows and all(s in ("Success", "Failed") for s in rows.values()):
                break
            assert time.monotonic() < deadline, f"queue not done after {QUEUE_TIMEOUT_S} s: {rows}"
            time.sleep(2)   # each `dvc queue status` costs ~1 s of CPU: poll lightly
    finally:   # never leave a worker (or a task) running behind a failed test
        dvc("queue", "stop", "--kill", cwd=proj, check=False)
    failed = [n for n, s in rows.items() if s != "Success"]
    assert not failed, "\n".join(dvc("queue", "logs", n, cwd=proj, check=False) for n in failed)

    exps = experiments(json.loads(dvc("exp", "show", "--json", cwd=proj)))
    assert exps == {"lr-0.2": (0.2, 0.8), "lr-0.3": (0.3, 0.7)}
    # The queue ran in temp dirs: the workspace still holds the baseline.
    assert (proj / "params.yaml").read_text() == "lr: 0.1\n"

    # Bring the winner into the workspace, ready to `git commit` + `dvc push`.
    dvc("exp", "apply", "lr-0.2", cwd=proj)
    assert "lr: 0.2" in (proj / "params.yaml").read_text()
    assert (proj / "out" / "model.txt").read_text() == "model lr=0.2\n"
    assert json.loads((proj / "metrics.json").read_text()) == {"score": 0.8}

    # Share an experiment: its git ref to a git remote, its outputs to the DVC remote.
    origin = tmp_path / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(origin), cwd=tmp_path)
    git("remote", "add", "origin", str(origin), cwd=proj)
    git("push", "-q", "origin", "main", cwd=proj)
    dvc("exp", "push", "origin", "lr-0.3", cwd=proj)
    assert "refs/exps/" in git("ls-remote", "origin", cwd=proj)
    clone = tmp_path / "clone"
    git("clone", "-q", str(origin), str(clone), cwd=tmp_path)
    dvc("exp", "pull", "origin", "lr-0.3", cwd=clone)
    dvc("exp", "apply", "lr-0.3", cwd=clone)
    assert (clone / "out" / "model.txt").read_text() == "model lr=0.3\n"   # fetched from the DVC remote
