"""Stage parse_hpo: hp.obo (params hpo.source) -> terms.parquet + edges.parquet, headline
counts (metrics) and every count (report)."""
from __future__ import annotations

from hpo_embed.common import run_stage
from hpo_embed.ontology.tables import run
from hpo_embed.params import load_params
from stages import parser


def main(argv: list[str] | None = None) -> None:
    a = parser("parse_hpo", __doc__, {
        "out": "folder for terms.parquet and edges.parquet",
        "metrics": "headline counts (JSON)",
        "report": "every count (JSON)",
        "downloads": "folder an https:// hpo.source is downloaded into once",
    }).parse_args(argv)
    run(load_params(a.params).hpo, a.out, a.metrics, a.report, a.downloads)


if __name__ == "__main__":
    run_stage(main)
