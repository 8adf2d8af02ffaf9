"""reports/benchmark.md: the tables a reviewer reads in a pull request."""
from __future__ import annotations

from hpo_embed.benchmark.inputs import SPLIT_ORDER, ModelSpec
from hpo_embed.benchmark.score import HEADLINE_METRICS, comparisons, headline_sets
from hpo_embed.pairs.external_sets import QuerySet
from hpo_embed.params import BenchmarkParams

MODE_TITLES = {"single": "single-vector (one document per concept, `benchmark.corpus_format`)",
               "multi": "multi-vector (label + synonyms, max per concept: phentrieve's `label_synonyms_max`)"}


def _fmt(report: dict, key: str) -> str:
    v = report.get(key)
    if v is None:
        return "–"
    lo, hi = report.get(f"{key}_ci_low"), report.get(f"{key}_ci_high")
    return f"{v:.3f} ({lo:.3f}–{hi:.3f})" if lo is not None and hi is not None else f"{v:.3f}"


def _p(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}"


def model_label(spec: ModelSpec, base_model: str) -> str:
    if spec.name == "base":
        return f"base: untuned `{base_model}`"
    if spec.name == "finetuned":
        return "finetuned: `models/finetuned`"
    if spec.name == "int8":
        return "int8: `models/onnx` (INT8 of finetuned)"
    return f"{spec.name}: `{spec.source or spec.path}` (comparison)"


def mode_section(report: dict, sets: list[QuerySet], names: list[str], mode: str,
                 labels: dict[str, str] | None) -> list[str]:
    """One retrieval mode: headline metrics, paired differences, languages, branches, seen/unseen."""
    hl = headline_sets(sets)
    header = "| model | " + " | ".join(n for n, _ in hl) + " |"
    rule = "|---|" + "---|" * len(hl)
    out = [f"## {MODE_TITLES[mode]}", "", f"{report.get(f'{mode}.n_vectors', '?')} vectors.", ""]
    for metric in HEADLINE_METRICS + ("ndcg@10", "hr@3", "hr@5"):
        out += [f"**{metric}**", "", header, rule]
        for m in names:
            out.append(f"| {m} | " + " | ".join(_fmt(report, f"{mode}.{qs.key}.{m}.{metric}") for _, qs in hl) + " |")
        out.append("")
    if comparisons(names):
        out += ["**paired MRR difference** (diff (95% CI), permutation p)", "", header, rule]
    for a, b in comparisons(names):
        cells = []
        for _, qs in hl:
            k = f"{mode}.{qs.key}.{a}_vs_{b}"
            if report.get(f"{k}.mrr_diff") is None:
                cells.append("–")
            else:
                cells.append(f"{report[f'{k}.mrr_diff']:+.3f} ({report[f'{k}.mrr_diff_ci_low']:+.3f}–"
                             f"{report[f'{k}.mrr_diff_ci_high']:+.3f}), p={_p(report.get(f'{k}.p_value'))}")
        out.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    out.append("")
    langs = [qs for qs in sets if qs.set == "heldout" and qs.lang != "all"]
    if len(langs) > 1:
        out += ["**MRR per held-out language**", "",
                "| model | " + " | ".join(qs.lang for qs in langs) + " |", "|---|" + "---|" * len(langs)]
        for m in names:
            out.append(f"| {m} | " + " | ".join(_fmt(report, f"{mode}.{qs.key}.{m}.mrr") for qs in langs) + " |")
        out.append("")
    return out + branch_rows(report, names, mode, labels) + seen_rows(report, sets, names, mode)


def branch_rows(report: dict, names: list[str], mode: str, labels: dict[str, str] | None) -> list[str]:
    branches = sorted({k.split(".")[3] for k in report if k.startswith(f"{mode}.heldout.branch.")})
    if not branches:
        return []
    out = ["<details><summary>MRR per top-level HPO branch (held-out, pooled; no CIs)</summary>", "",
           "| branch | queries | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for br in branches:
        k = f"{mode}.heldout.branch.{br}"
        label = (labels or {}).get(br, "")
        out.append(f"| {br} {label} | {report.get(f'{k}.{names[0]}.n_queries', 0)} | "
                   + " | ".join(f"{report[f'{k}.{m}.mrr']:.3f}" if f"{k}.{m}.mrr" in report else "–"
                                for m in names) + " |")
    return out + ["", "</details>", ""]


def seen_rows(report: dict, sets: list[QuerySet], names: list[str], mode: str) -> list[str]:
    split = [qs for qs in sets if qs.set != "heldout" and report.get(f"{mode}.{qs.key}.seen.{names[0]}.mrr") is not None]
    if not split:
        return []
    out = ["**MRR on cases whose concept was trained on (seen) vs not (unseen)**", "",
           "| set | model | seen | unseen |", "|---|---|---|---|"]
    for qs in split:
        for m in names:
            out.append(f"| {qs.key} | {m} | {_fmt(report, f'{mode}.{qs.key}.seen.{m}.mrr')} | "
                       f"{_fmt(report, f'{mode}.{qs.key}.unseen.{m}.mrr')} |")
    return out + [""]


def holdout_rows(ext: list[QuerySet]) -> list[str]:
    out = ["## Hold-out: cases by the split of their concept", "",
           "`train`: a case expects a concept the model was trained on (its official labels are "
           "training pairs) -- 0 when `pairs.holdout_sets` holds the set out.", "",
           "| set | cases | " + " | ".join(SPLIT_ORDER) + " | indexed (multi, not scored) |",
           "|---|---|" + "---|" * (len(SPLIT_ORDER) + 1)]
    for qs in ext:
        out.append(f"| {qs.key} | {len(qs.texts)} | "
                   + " | ".join(str(qs.counts.get(f"cases_by_split.{s}", 0)) for s in SPLIT_ORDER)
                   + f" | {qs.counts.get('n_indexed_queries', 0)} |")
    return out + [""]


def report_markdown(report: dict, sets: list[QuerySet], specs: list[ModelSpec], modes: list[str],
                    bp: BenchmarkParams, base_model: str, duplicates: dict[str, str],
                    labels: dict[str, str] | None = None) -> str:
    """reports/benchmark.md: what a reviewer reads in a pull request."""
    names = [s.name for s in specs]
    ext = [qs for qs in sets if qs.set != "heldout"]
    out = ["# Benchmark report", "",
           "Written by the benchmark stage (`python -m stages.benchmark`); every figure is in "
           "`reports/benchmark.json`, the headline ones in `metrics/benchmark.json` "
           f"(retrieval `{bp.headline_retrieval}`). Cells: mean (95% bootstrap CI, "
           f"{bp.bootstrap_resamples} resamples). MRR = mean reciprocal full rank, ties pessimistic "
           "(hpo_embed/retrieval/metrics.py); MaxOntSim@5 = phentrieve's HYBRID ontology similarity, "
           "best over the expected ids and the top 5. `heldout` = test-split queries of every "
           "language pooled.", "",
           "Models: " + "; ".join(model_label(s, base_model) for s in specs) + ".", ""]
    for mode in modes:
        out += mode_section(report, sets, names, mode, labels)
    if ext:
        out += holdout_rows(ext)
    for dup, first in duplicates.items():
        out.append(f"- `{dup}` has the same cases as `{first}`: scored once.")
    held = [qs for qs in sets if qs.set == "heldout"]
    if held:
        out += ["", "Held-out queries: " + ", ".join(f"{qs.key} {len(qs.texts)}" for qs in held)
                + (f"; multi-vector skips {held[-1].counts.get('n_indexed_queries', 0)} pooled queries that "
                   "are indexed texts of their own concept (English synonyms)." if "multi" in modes else ".")]
    return "\n".join(out) + "\n"
