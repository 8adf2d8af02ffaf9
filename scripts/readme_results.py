"""Write the README's results section from the pipeline's own outputs.

Reads reports/benchmark.json (benchmark stage), metrics/train.json, metrics/quantize.json
and metrics/base_model.json, and replaces the text between ``<!-- results:start -->`` and
``<!-- results:end -->`` in README.md. tests/test_readme.py checks that the README's table
is what the reports say. Run after ``dvc repro``:

    python scripts/readme_results.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # hpo_embed when run as a script
from hpo_embed.common import UserError  # noqa: E402
from hpo_embed.markdown import fill_section  # noqa: E402
from hpo_embed.study import report_sets  # noqa: E402
MODELS = (("base", "e5-small (untuned)"), ("finetuned", "fine-tuned"), ("int8", "fine-tuned INT8"),
          ("minilm", "MiniLM (English)"))
MODES = (("multi", "multi-vector (label + synonyms, max; phentrieve's `label_synonyms_max`)"),
         ("single", "single-vector (one label per concept)"))
LANG_NAMES = {"de": "German", "es": "Spanish", "fr": "French", "en": "English synonyms", "all": "all languages"}


def set_rows(report: dict, mode: str) -> list[tuple[str, str]]:
    """(report key of the set, row title) in a fixed order: held-out languages, then external sets."""
    return [(k, f"held-out {LANG_NAMES.get(k.split('.')[1], k.split('.')[1])}" if k.startswith("heldout.")
             else k.replace("phentrieve.", "phentrieve ")) for k in report_sets(report, mode, "base")]


def cell(report: dict, key: str) -> str:
    mrr, hr1 = report.get(f"{key}.mrr"), report.get(f"{key}.hr@1")
    if mrr is None:
        return "–"
    return f"{mrr:.3f} / {hr1:.3f}" if hr1 is not None else f"{mrr:.3f}"


def p_cell(p) -> str:
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def table(report: dict, mode: str) -> list[str]:
    models = [(m, title) for m, title in MODELS if any(k.startswith(f"{mode}.") and f".{m}.mrr" in k for k in report)]
    out = ["| query set | n | " + " | ".join(t for _, t in models) + " | Δ MRR fine-tuned − base (95% CI) | p |",
           "|---|---|" + "---|" * len(models) + "---|---|"]
    for key, title in set_rows(report, mode):
        n = report.get(f"{mode}.{key}.base.n_queries", "")
        cmp_ = f"{mode}.{key}.finetuned_vs_base"
        diff = report.get(f"{cmp_}.mrr_diff")
        d = (f"{diff:+.3f} ({report[f'{cmp_}.mrr_diff_ci_low']:+.3f} to {report[f'{cmp_}.mrr_diff_ci_high']:+.3f})"
             if diff is not None else "–")
        out.append(f"| {title} | {n:,} | " + " | ".join(cell(report, f"{mode}.{key}.{m}") for m, _ in models)
                   + f" | {d} | {p_cell(report.get(f'{cmp_}.p_value'))} |")
    return out


def prompt_note(base: dict) -> str:
    t = base.get("prompt_test")
    if not t:
        return ""
    verdict = "significant" if t["p_value"] < t["alpha"] else "not significant"
    return f" (`query: ` − none on dev {t['mrr_diff']:+.3f}, p = {t['p_value']:.2g}: {verdict})"


def section(report: dict, train: dict, quant: dict, base: dict) -> str:
    lines = ["Measured by `dvc repro` on default params (2-core CPU, official translations and the",
             "phentrieve files present; benchmark concepts held out of training). MRR / HR@1 over the",
             "full rank of 18,387 English concepts; p = paired permutation test. Full tables with CIs,",
             "per branch and per language: `reports/benchmark.md`.", ""]
    # the README shows the headline mode only (it stays a page); both modes: reports/benchmark.md
    for mode, title in MODES[:1]:
        if any(k.startswith(f"{mode}.") for k in report):
            lines += [f"**{title}**; single-vector: `reports/benchmark.md`", ""] + table(report, mode) + [""]
    if train:
        lines.append(f"Training (`metrics/train.json`): dev MRR {train.get('dev_mrr_base', float('nan')):.3f} → "
                     f"{train.get('dev_mrr_best', float('nan')):.3f} (best step {train.get('best_step')}). "
                     f"Base model: `{base.get('source')}`, prompt `{base.get('prompt')}`{prompt_note(base)}.")
    if quant:
        k = "multi.heldout.all.int8_vs_finetuned.mrr_diff"
        cost = (f"; benchmark: INT8 − fine-tuned held-out MRR {report[k]:+.4f} "
                f"[{report[k + '_ci_low']:+.4f}, {report[k + '_ci_high']:+.4f}]" if k in report else "")
        lines.append(f"INT8 (`metrics/quantize.json`): `{quant.get('chosen')}`, "
                     f"{quant.get('speed_ratio_b32')}× PyTorch fp32 sentences/s at batch 32 (2 threads), "
                     f"gate passed: {quant.get('gate_passed')}, {quant.get('size_mb')} MB{cost}.")
    return "\n".join(lines).rstrip() + "\n"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def main() -> None:
    report = load(ROOT / "reports" / "benchmark.json")
    if not report:
        sys.exit("reports/benchmark.json: missing; run dvc repro first")
    text = section(report, load(ROOT / "metrics" / "train.json"), load(ROOT / "metrics" / "quantize.json"),
                   load(ROOT / "metrics" / "base_model.json"))
    readme = ROOT / "README.md"
    try:
        readme.write_text(fill_section(readme.read_text(encoding="utf-8"), "results", text, str(readme)),
                          encoding="utf-8")
    except UserError as e:
        sys.exit(f"error: {e}")
    print(text)


if __name__ == "__main__":
    main()
