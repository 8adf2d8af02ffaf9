"""Print a DVC stage's command from dvc.yaml (the one place its paths are written), with
extra arguments appended: ``python scripts/stage_cmd.py quantize --select``. The Makefile
runs stage scripts by hand through it (``make preflight``, ``make quantize-select``)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def stage_cmd(stage: str, extra: list[str]) -> str:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    if stage not in stages:
        raise SystemExit(f"error: dvc.yaml has no stage {stage!r} (stages: {', '.join(stages)})")
    return " ".join([stages[stage]["cmd"], *map(shlex.quote, extra)])


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python scripts/stage_cmd.py <stage> [extra arguments]")
    print(stage_cmd(sys.argv[1], sys.argv[2:]))
