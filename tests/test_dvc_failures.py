"""A failed or killed run under DVC keeps every finished output, and optional data added
later reruns what reads it (docs/reliability.md, rows 13 and 16).

These tests run the project's own dvc.yaml (every stage, its deps, outs, persist flags and
params) through `dvc repro` / `dvc exp run` in a temporary git repository. The preflight
stage is the real one (the one validator of every parameter, seconds); every other stage's
command is replaced by a stand-in that validates the params file like the real stages do
and then writes each output the stage declares, so the test is about what DVC does with
those outputs, in seconds instead of an hour.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DVC = Path(sys.executable).with_name("dvc")
pytestmark = pytest.mark.skipif(not DVC.exists(), reason="dvc not installed in this environment")

# A stage stand-in: validate params.yaml (exit 2 with one line, as a real stage), optionally
# fail or hang where the test says, then write every declared output with a run stamp.
STAND_IN = '''
import json, os, sys, time
from pathlib import Path
from hpo_embed.common import UserError, run_stage
from hpo_embed.params import load_params

def main():
    stage, outs = sys.argv[1], sys.argv[2:]
    load_params("params.yaml")
    Path(".started-" + stage).write_text(str(os.getpid()))
    if os.environ.get("STAND_IN_HANG") == stage:
        time.sleep(600)
    if os.environ.get("STAND_IN_FAIL") == stage:
        raise UserError(f"{stage}: failed on purpose")
    stamp = json.dumps({"stage": stage, "run": os.environ.get("STAND_IN_RUN", "1")})
    for out in outs:
        p = Path(out)
        if p.suffix == ".parquet":   # preflight sizes its estimate from train.parquet
            import pyarrow as pa, pyarrow.parquet as pq
            p.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"pair_type": pa.array([], pa.string()), "stamp": pa.array([], pa.string())},
                                    metadata={"stamp": stamp}), p)
        elif p.suffix:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(stamp)
        else:
            p.mkdir(parents=True, exist_ok=True)
            (p / "part.json").write_text(stamp)

run_stage(main)
'''


def _entries(stage: dict) -> list[str]:
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for item in stage.get(kind, []):
            paths.append(next(iter(item)) if isinstance(item, dict) else item)
    return paths


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": "", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "HPO_EMBED_LOGLEVEL": "WARNING",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


def run(cmd: list[str], cwd: Path, ok: bool = True, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """The project's dvc.yaml, code, configs and params in a fresh git + DVC repository,
    every stage but preflight replaced by the stand-in, after one `dvc repro`, committed."""
    root = tmp_path_factory.mktemp("dvc_failures") / "proj"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("hpo_embed", "stages", "configs", "data/reference"):
        shutil.copytree(REPO / d, root / d, ignore=ignore)
    for f in ("params.yaml", "requirements.txt", ".gitignore", ".dvcignore",
              "data/external/hpo-translations/README.md", "data/external/phentrieve-benchmarks/german/README.md"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / f, root / f)
    (root / "stand_in.py").write_text(STAND_IN)
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    deps = {d for stage in spec["stages"].values() for d in stage.get("deps", [])}
    for name, stage in spec["stages"].items():
        if name != "preflight":   # a folder output holds the files other stages read from it
            outs = _entries(stage)
            inner = sorted(d for d in deps for o in outs if d.startswith(o + "/"))
            stage["cmd"] = f"python stand_in.py {name} " + " ".join(outs + inner)
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    run(["git", "init", "-q"], root)
    run([str(DVC), "init", "-q"], root)
    run([str(DVC), "config", "core.analytics", "false"], root)
    run([str(DVC), "repro", "-q"], root)
    for marker in root.glob(".started-*"):
        marker.unlink()
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "first run"], root)
    return root


@pytest.fixture()
def project(first_run, tmp_path) -> Path:
    """A copy of the first run's repository for one test."""
    root = tmp_path / "proj"
    shutil.copytree(first_run, root, symlinks=True)
    return root


def outputs(root: Path) -> dict[str, str]:
    """Every declared output of every stage -> its content (a folder: its files')."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    got = {}
    for stage in spec["stages"].values():
        for out in _entries(stage):
            p = root / out
            if p.is_dir():
                got[out] = json.dumps({str(f.relative_to(p)): f.read_bytes().hex() for f in sorted(p.rglob("*"))
                                       if f.is_file()})
            else:
                got[out] = p.read_bytes().hex() if p.is_file() else "<missing>"
    return got


def test_every_output_is_persistent_and_preflight_runs_first():
    """The mechanism, statically: no output of any stage is removed by DVC before its stage
    runs, and every other stage is downstream of preflight (which reads the whole file)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in spec.items():
        for kind in ("outs", "metrics", "plots"):
            for item in stage.get(kind, []):
                assert isinstance(item, dict) and next(iter(item.values())).get("persist") is True, (name, item)
    assert spec["preflight"]["params"] == [{"params.yaml": None}]
    made_by = {out: name for name, st in spec.items() for out in _entries(st)}
    upstream = {name: {made_by[d] for d in st.get("deps", []) if d in made_by} for name, st in spec.items()}

    def ancestors(name: str) -> set[str]:
        todo, seen = list(upstream[name]), set()
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo += upstream[n]
        return seen
    for name in spec:
        if name != "preflight":
            assert "preflight" in ancestors(name), f"{name} can run before preflight"


@pytest.mark.parametrize("setting, message", [
    ("lr=abc", "error: params.yaml: lr: expected a number, got 'abc'"),
    ("train.save_steps=7", "error: params.yaml: train.save_steps: 7 must be a multiple of train.eval_steps (100)"),
    ("quantize.candidates=[]", "error: params.yaml: quantize.candidates: empty with quantize.method auto"),
    ("benchmark.languages=[it]", "error: params.yaml: benchmark.languages: it is not a language of this run"),
])
def test_a_rejected_parameter_stops_in_preflight_and_removes_nothing(project, setting, message):
    before = outputs(project)
    proc = run([str(DVC), "exp", "run", "-S", setting], project, ok=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error: params.yaml")] == \
        [next(ln for ln in proc.stderr.splitlines() if ln.startswith("error: params.yaml"))]
    assert not list(project.glob(".started-*")), "a stage ran after a rejected parameter"
    assert outputs(project) == before


def test_a_stage_that_fails_keeps_its_previous_outputs(project):
    """A failure that only the stage can see (e.g. no German queries in this data) leaves
    the stage's earlier outputs, metrics and reports in place."""
    before = outputs(project)
    proc = run([str(DVC), "exp", "run", "-S", "benchmark.seed=5"], project, ok=False,
               STAND_IN_FAIL="benchmark", STAND_IN_RUN="2")
    assert "error: benchmark: failed on purpose" in proc.stderr
    assert (project / ".started-benchmark").is_file()
    assert outputs(project) == before
    run(["git", "checkout", "params.yaml"], project)


def test_kill_9_of_a_stage_under_dvc_repro_keeps_its_previous_outputs(project):
    before = outputs(project)
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("  seed: 0\n", "  seed: 1\n", 1))   # quantize.seed
    assert "quantize" in run([str(DVC), "status"], project).stdout
    proc = subprocess.Popen([str(DVC), "repro"], cwd=project, env=_env(STAND_IN_HANG="quantize", STAND_IN_RUN="2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    marker = project / ".started-quantize"
    deadline = time.time() + 120
    while not marker.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.is_file(), "the quantize stand-in never started"
    os.kill(int(marker.read_text()), signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert outputs(project) == before
    assert "quantize" in run([str(DVC), "status"], project).stdout   # and it reruns next time


def _changed(root: Path) -> set[str]:
    return set(json.loads(run([str(DVC), "status", "--json"], root).stdout))


def test_optional_data_added_later_reruns_what_reads_it(project):
    assert _changed(project) == set()
    bench = project / "data/external/phentrieve-benchmarks/german/extra_v1.json"
    bench.write_text(json.dumps([{"text": "Krampfanfall", "expected_hpo_ids": ["HP:0001250"]}]))
    assert _changed(project) == {"pairs", "quantize", "benchmark", "rerank_candidates"}   # quantize: its gate scores the sets
    bench.unlink()
    assert _changed(project) == set()
    (project / "data/external/hpo-translations/hp-de.babelon.tsv").write_text("source_language\n")
    assert _changed(project) == {"translate"}
