"""Stage translate: the selected HPO terms -> one JSON file per term with the translations
of every language in translate.languages (official files > cache > machine translation),
the label coverage (metrics) and every count (report).

``--dry-run`` prints the characters and list-price cost machine translation would need and
writes nothing; ``--fetch-pinned FOLDER`` downloads the pinned official files and exits."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hpo_embed.common import run_stage
from hpo_embed.params import load_params
from hpo_embed.translation.official import PINNED_FILES, fetch_pinned
from hpo_embed.translation.translate import run
from stages import parser

log = logging.getLogger("hpo_embed")


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--fetch-pinned"]:
        ap = argparse.ArgumentParser(prog="python -m stages.translate --fetch-pinned")
        ap.add_argument("--fetch-pinned", type=Path, required=True, metavar="FOLDER")
        dest = fetch_pinned(ap.parse_args(argv).fetch_pinned)
        print(f"{len(PINNED_FILES)} official files in {dest}")
        return
    ap = parser("translate", __doc__, {
        "terms": "the parse_hpo stage's terms.parquet",
        "out": "folder of per-term JSON files (persist: reruns reuse every stored text)",
        "metrics": "headline figures (JSON)",
        "report": "every count (JSON)",
        "downloads": "folder that translate.official: pinned downloads into",
    })
    ap.add_argument("--dry-run", action="store_true", help="print characters and list-price cost; write nothing")
    a = ap.parse_args(argv)
    m = run(load_params(a.params).translate, a.terms, a.out, a.metrics, dry_run=a.dry_run,
            report_path=a.report, downloads=a.downloads)
    if not a.dry_run:
        for lang, e in m["languages"].items():
            log.info("%s: labels %s, definitions %s, synonyms %s", lang,
                     json.dumps(e["labels"]), json.dumps(e["definitions"]), json.dumps(e["synonyms"]))


if __name__ == "__main__":
    run_stage(main)
