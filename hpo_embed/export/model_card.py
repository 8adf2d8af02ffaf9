"""The release's model card, written from what the run did: the languages and pairs actually
trained (reports/train.json), the HPO release (metrics/hpo.json), the base model and its
licence (models/base/base_model.json), the benchmark stage's figures (metrics/benchmark.json,
their CIs from reports/benchmark.json), the INT8 choice (metrics/quantize.json) and the
calibrated thresholds. Every number is printed from those files (4 decimals), never typed."""
from __future__ import annotations

from typing import Any

HPO_LICENCE = "https://hpo.jax.org/license"


def _f(v: Any, fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _front_matter(name: str, languages: list[str], base: dict[str, Any]) -> list[str]:
    langs = "\n".join(f"  - {lang}" for lang in languages)
    lines = ["---", f"language:\n{langs}", f"license: {(base.get('licence') or 'other').lower()}",
             "library_name: sentence-transformers", "pipeline_tag: sentence-similarity"]
    if base.get("upstream"):
        lines.append(f"base_model: {base['upstream']}")
    return lines + ["tags:\n  - sentence-transformers\n  - hpo\n  - human-phenotype-ontology\n  - phentrieve",
                    f"model_name: {name}", "---", ""]


def _usage(name: str, prompt: str | None, hpo_version: str) -> list[str]:
    tag = hpo_version.rsplit("/", 1)[-1]
    return ["## Use it", "",
            "phentrieve (loads the folder by path; its index is named after the folder):", "", "```bash",
            f"phentrieve data prepare --hpo-version v{tag}   # the HPO release this model was trained on",
            f"phentrieve index build --model-name /path/to/{name} --multi-vector",
            f"phentrieve benchmark run --model-name /path/to/{name}", "```", "",
            "sentence-transformers (4.1 or later; compare by cosine):", "", "```python",
            "from sentence_transformers import SentenceTransformer",
            f'model = SentenceTransformer("/path/to/{name}")            # PyTorch',
            f'cpu = SentenceTransformer("/path/to/{name}", backend="onnx")  # the INT8 ONNX model',
            'emb = model.encode(["Krampfanfall", "Seizure"])             # no prompt argument needed',
            "```", "",
            (f"`encode()` prepends the saved default prompt `{prompt!r}` to every text (queries and documents "
             "alike, as in training): do not add it yourself." if prompt else
             "No prompt: `encode()` encodes texts as given, as in training."), ""]


def _trained(train: dict[str, Any], hpo: dict[str, Any], holdout_all: bool, max_seq_length: int) -> list[str]:
    by = train.get("pairs_by", {})
    langs = ", ".join(f"{k} {v:,}" for k, v in by.get("languages", {}).items()) or "n/a"
    types = ", ".join(f"{k} {v:,}" for k, v in by.get("type", {}).items()) or "n/a"
    return ["## What it was trained on", "",
            f"- HPO release `{hpo.get('data_version')}`: {hpo.get('terms', {}).get('selected', 'n/a'):,} concepts "
            "(Phenotypic abnormality), English labels and synonyms with their official translations (HPO Babelon "
            "files) and machine translations where configured",
            f"- {train.get('pairs', 0):,} training pairs of {train.get('pairs_available', 0):,} available; "
            f"by type: {types}",
            f"- by language (anchor-positive): {langs}",
            f"- {train.get('steps')} steps, {train.get('epochs')} epochs, loss `{train.get('loss')}`, negatives "
            f"`{train.get('negatives')}`, precision {train.get('precision')}; dev MRR "
            f"{_f(train.get('baseline', {}).get('mrr'))} (base) -> {_f(train.get('best', {}).get('mrr'))} "
            f"(best step {train.get('best_step')})",
            ("- Trained on **every** concept (`pairs.holdout_sets: []`): the phentrieve-set figures below are "
             "**not** held-out figures; the seen/unseen split shows the difference" if holdout_all else
             "- Held out of training: the test and dev concepts, and every concept of the phentrieve benchmark "
             "sets (their case texts too)"),
            f"- Token limit: {max_seq_length} (the base model's); training used shorter texts", ""]


def _results(metrics: dict[str, Any], report: dict[str, Any], mode: str, sets: list[str]) -> list[str]:
    def ci(key: str) -> str:
        lo, hi = report.get(f"{key}_ci_low"), report.get(f"{key}_ci_high")
        return f" [{_f(lo, '.3f')}, {_f(hi, '.3f')}]" if lo is not None else ""

    rows = ["## Results", "",
            f"The benchmark stage of the same run (`metrics/benchmark.json`; `{mode}`-vector retrieval: a concept "
            "scores the max over its English label and EXACT synonyms, as phentrieve's multi-vector index). MRR "
            "[95% bootstrap CI]; differences are paired over the same queries (permutation p).", "",
            "| set | base | fine-tuned | INT8 (onnx/model.onnx) | fine-tuned − base | INT8 − fine-tuned |",
            "|---|---|---|---|---|---|"]
    for name, key in sets:
        cells = [f"{_f(metrics.get(f'{name}.{m}.mrr'))}{ci(f'{mode}.{key}.{m}.mrr')}" for m in ("base", "finetuned", "int8")]
        for comp in ("finetuned_vs_base", "int8_vs_finetuned"):
            d = metrics.get(f"{name}.{comp}.mrr_diff")
            lo, hi, p = (report.get(f"{mode}.{key}.{comp}.{k}") for k in ("mrr_diff_ci_low", "mrr_diff_ci_high",
                                                                           "p_value"))
            cells.append("n/a" if d is None else f"{d:+.4f} [{_f(lo, '+.3f')}, {_f(hi, '+.3f')}], p={_f(p, '.3g')}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    seen = [(n, k) for n, k in sets if f"{mode}.{k}.seen.finetuned.mrr" in report]
    if seen:
        rows += ["", "Cases whose concept was trained on (seen) vs not (unseen), fine-tuned MRR:", ""]
        rows += [f"- {n}: seen {_f(report[f'{mode}.{k}.seen.finetuned.mrr'])} "
                 f"(n={report.get(f'{mode}.{k}.seen.finetuned.n_queries')}), unseen "
                 f"{_f(report.get(f'{mode}.{k}.unseen.finetuned.mrr'))} "
                 f"(n={report.get(f'{mode}.{k}.unseen.finetuned.n_queries')})" for n, k in seen]
    return rows + [""]


def _scores(cal: dict[str, Any]) -> list[str]:
    rows = ["## What a score means", "",
            "The cosine of a top-1 hit is not a probability. `calibration.json` maps it to P(correct) (isotonic and "
            "Platt, fitted on dev queries of every language) and gives the cosine thresholds whose dev precision "
            "reaches 0.9 and 0.95; precision and coverage at them on the held-out queries:", "",
            "| model file | precision target | cosine threshold | held-out precision | held-out coverage |",
            "|---|---|---|---|---|"]
    for m, e in cal.get("models", {}).items():
        for t in cal.get("targets", []):
            th = e["thresholds"][f"{t}"]["threshold"]
            held = e["sets"].get("heldout", {}).get(f"at_{t}", {})
            rows.append(f"| {m} | {t} | {_f(th)} | {_f(held.get('precision'))} | {_f(held.get('coverage'), '.1%')} |")
    return rows + ["", "phentrieve's default chunk threshold (0.7) is on another scale than this model's scores: "
                       "use these thresholds instead.", ""]


def release_card(name: str, *, languages: list[str], base: dict[str, Any], hpo: dict[str, Any], train: dict[str, Any],
               metrics: dict[str, Any], report: dict[str, Any], quantize: dict[str, Any], cal: dict[str, Any],
               mode: str, sets: list[tuple[str, str]], holdout_all: bool, max_seq_length: int) -> str:
    """The README.md of the release folder (module docstring). ``sets``: (metrics name,
    report key) of each headline set."""
    prompt = "query: " if base.get("prompt") == "query" else None
    lines = _front_matter(name, languages, base) + [
        f"# {name}", "",
        "Multilingual sentence embeddings specialised for Human Phenotype Ontology (HPO) concepts: a clinical "
        "phrase in (e.g. German), the closest HPO terms out by cosine. Built by the hpo-embed pipeline "
        "(`dvc repro`); every figure on this card comes from that run's outputs.", ""]
    lines += _usage(name, prompt, hpo.get("data_version", ""))
    lines += _trained(train, hpo, holdout_all, max_seq_length)
    lines += ["## Base model", "",
              f"`{base.get('upstream') or base.get('source')}` ({base.get('revision')}), licence "
              f"{base.get('licence') or 'see upstream'}" + (f"; {base['weights']}" if base.get("weights") else ""), ""]
    lines += _results(metrics, report, mode, sets)
    lines += [f"INT8: `{quantize.get('chosen')}` (quantize stage: {quantize.get('speed_ratio_b32')}× PyTorch fp32 at "
              f"batch 32 on the build machine; gate passed: {quantize.get('gate_passed')}).", ""]
    lines += _scores(cal)
    lines += ["## Licences", "",
              f"- Model weights: {base.get('licence') or 'see the base model'} (the base model's licence)",
              f"- HPO content (labels, synonyms, translations) used for training: the HPO licence, {HPO_LICENCE}; "
              "cite the HPO when you use this model", "",
              "## Files", "", "`SHA256SUMS` lists every file; check the folder with `sha256sum -c SHA256SUMS`.", ""]
    return "\n".join(lines)
