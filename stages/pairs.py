"""Stage pairs: split the selected concepts by a seeded hash per top-level branch, build
within- and cross-lingual training pairs and the dev/test queries (translate.languages is
the master language list), hold out the benchmark files' concepts and case texts."""
from __future__ import annotations

from hpo_embed.common import log, run_stage
from hpo_embed.pairs.build import run
from hpo_embed.pairs.splits import holdout_files
from hpo_embed.params import load_params
from stages import parser


def main(argv: list[str] | None = None) -> None:
    a = parser("pairs", __doc__, {
        "translations": "the translate stage's folder of per-term JSON files",
        "terms": "the parse_hpo stage's terms.parquet",
        "out": "folder for train/dev/test pairs, concepts, queries and shared_texts .parquet",
        "metrics": "headline figures (JSON)",
        "report": "every count (JSON)",
    }).parse_args(argv)
    params = load_params(a.params)
    languages = params.translate.languages
    if languages is None:
        log.warning("translate.languages is not declared: using every language in the per-ID files")
    run(params.pairs, languages, a.translations, a.terms, a.out, a.metrics,
        holdout=holdout_files(params), report_path=a.report)


if __name__ == "__main__":
    run_stage(main)
