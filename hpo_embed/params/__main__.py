"""``python -m hpo_embed.params [params.yaml]``: validate a params file, print the values."""
from __future__ import annotations

import sys

import yaml

from hpo_embed.common import run_stage
from hpo_embed.params import load_params


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = load_params(argv[0] if argv else None)
    print(yaml.safe_dump(p.model_dump(), sort_keys=False, allow_unicode=True), end="")


if __name__ == "__main__":
    run_stage(main)
