"""`dvc exp run -S lr=1e-5` exactly as typed: DVC writes `1e-05` (a string to PyYAML)
into the real params.yaml and the stage code reads it as the float 1e-05."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DVC = Path(sys.executable).with_name("dvc")


def sh(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(cwd), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.skipif(not DVC.exists(), reason="dvc not installed in this environment")
def test_exp_run_set_param_lr_as_typed(tmp_path):
    shutil.copytree(REPO / "hpo_embed", tmp_path / "hpo_embed", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"show_lr": {
        "cmd": "python -c \"from hpo_embed.params import load_params; print(repr(load_params().lr))\" > lr.txt",
        "deps": ["hpo_embed/params"], "params": ["lr"], "outs": [{"lr.txt": {"cache": False}}]}}}))
    sh(["git", "init", "-q"], tmp_path)
    sh([str(DVC), "init", "-q"], tmp_path)
    sh([str(DVC), "config", "core.analytics", "false"], tmp_path)
    sh(["git", "add", "-A"], tmp_path)
    sh(["git", "commit", "-qm", "init"], tmp_path)
    sh([str(DVC), "exp", "run", "-S", "lr=1e-5"], tmp_path)
    assert "lr: 1e-05" in (tmp_path / "params.yaml").read_text()   # what DVC writes...
    assert isinstance(yaml.safe_load("lr: 1e-05")["lr"], str)       # ...is a string to PyYAML
    assert (tmp_path / "lr.txt").read_text().strip() == "1e-05"     # ...and a float to the stages
