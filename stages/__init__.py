"""One thin script per DVC stage (``python -m stages.<name>``, see dvc.yaml): parse the
paths that the stage's ``cmd`` passes, load params.yaml, call the ``hpo_embed`` library."""
from __future__ import annotations

import argparse
from pathlib import Path


def parser(prog: str, doc: str | None, paths: dict[str, str], optional: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """An argument parser whose ``paths`` (``--name``: help) are required paths and whose
    ``optional`` ones default to None; every stage takes ``--params`` too."""
    ap = argparse.ArgumentParser(prog=f"python -m stages.{prog}", description=(doc or "").splitlines()[0])
    ap.add_argument("--params", type=Path, required=True, help="params.yaml")
    for name, help_ in paths.items():
        ap.add_argument(f"--{name}", type=Path, required=True, help=help_)
    for name, help_ in (optional or {}).items():
        ap.add_argument(f"--{name}", type=Path, default=None, help=help_)
    return ap
