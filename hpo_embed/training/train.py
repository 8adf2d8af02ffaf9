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
from typing import Any

import pandas as pd
import torch
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from transformers import set_seed

from hpo_embed.checkpoints import discard_other_runs, finish, fingerprint, last_complete_checkpoint, run_folder
from hpo_embed.common import UserError, write_json
from hpo_embed.gpu.preflight import bf16_native, check_precision, lower_hint, resolve_device
from hpo_embed.hardware import TokenCounter
from hpo_embed.models.loader import freeze_word_embeddings, known_good_tokenizer
from hpo_embed.negatives.anchors import select_training_rows
from hpo_embed.negatives.dataset import load_negatives, mined_examples, mining_inputs
from hpo_embed.ontology.graph import load_graph
from hpo_embed.pairs.dev_set import dev_eval_set
from hpo_embed.retrieval.corpus import build_corpus, load_terms
from hpo_embed.schemas import read_table
from hpo_embed.training.card import model_card, write_model
from hpo_embed.training.iterative import round_one
from hpo_embed.training.losses import build_examples, build_loss, load_model, negatives_for, set_precision
from hpo_embed.training.monitor import BEST_METRIC, DevRetrieval, LiveLog, dev_summary, open_live, peak_share
from hpo_embed.training.precision import decide as choose_cpu_precision
from hpo_embed.training.sampling import concept_batch_sampler

log = logging.getLogger("hpo_embed.train")


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


def headline(report: dict) -> dict:
    """The train figures tracked as DVC metrics (everything else: reports/train.json). Dev
    MRR is the benchmark's quantity (full rank, pessimistic ties) on the dev corpus."""
    return {"dev_mrr_base": report["baseline"]["mrr"], "dev_mrr_best": report["best"]["mrr"],
            "dev_hr@1_best": report["best"]["hr@1"], "gain_mrr": report["gain_mrr"],
            "best_step": report["best_step"], "train_time_s": report["train_time_s"],
            "pairs_per_s": report["pairs_per_s"], "precision": report["precision"],
            "peak_share": report["peak_share"]}


@dataclasses.dataclass
class Run:
    """What the steps of one training run share."""
    params: Any
    paths: TrainPaths
    device: str
    precision: str
    rank: int
    fingerprint: str
    base_info_file: Path
    model: Any = None
    prompt: str | None = None


def load_rows(params, a: TrainPaths) -> dict[str, Any]:
    """The training rows (shared selection with the mine stage), their languages and the dev set."""
    p = params.train
    all_pairs = read_table(a.pairs / "train.parquet", "pairs")
    train_df, available = select_training_rows(all_pairs, p.pair_types, p.max_train_pairs, p.seed,
                                               a.pairs / "train.parquet", p.language_weights)
    langs = sorted(set(train_df.get("lang_anchor", pd.Series(dtype=str)).dropna())
                   | set(train_df.get("lang_positive", pd.Series(dtype=str)).dropna()))
    queries = read_table(a.pairs / "queries.parquet", "queries")
    dev = dev_eval_set(queries, build_corpus(load_terms(a.terms), p.corpus_format), p, a.pairs / "queries.parquet")
    return {"all_pairs": all_pairs, "train_df": train_df, "available": available, "langs": langs, "dev": dev}


def trained_counts(train_df: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Trained rows per pair type and per language pair (``en-de``: anchor-positive): what the
    model card says the model was trained on."""
    def col(name: str) -> pd.Series:   # a column absent from a hand-made frame counts as unknown
        return train_df[name].fillna("?") if name in train_df else pd.Series("?", index=train_df.index)

    langs = col("lang_anchor") + "-" + col("lang_positive")
    return {"type": {k: int(v) for k, v in sorted(col("pair_type").value_counts().items())},
            "languages": {k: int(v) for k, v in sorted(langs.value_counts().items())}}


def start_run(params, a: TrainPaths) -> Run:
    """Device and precision, the run's fingerprint (checkpoints of another run are discarded)
    and its checkpoint folder (``--checkpoints``, or <root>/<fingerprint>: hpo_embed.checkpoints)."""
    p = params.train
    device = resolve_device(p.device)  # train.device: cuda without a usable GPU stops here, in one line
    precision = pick_precision(p.precision, device)
    rank = int(os.environ.get("RANK", "0"))
    if not a.base.is_dir():
        raise UserError(f"{a.base}: no base model; run the base_model stage first (dvc repro base_model)")
    base_info_file = a.base / "base_model.json"   # written by the base_model stage (weights checksum, prompt)
    base_id = base_info_file if base_info_file.is_file() else a.base / "config_sentence_transformers.json"
    fp = run_fingerprint(params, [a.pairs / "train.parquet", a.pairs / "queries.parquet", a.terms, base_id]
                         + ([a.edges] if negatives_for(p) == "sibling" else [])
                         + ([a.negatives / "negatives.parquet"] if negatives_for(p) == "mined" else []))
    a = dataclasses.replace(a, checkpoints=run_folder(a.checkpoints, fp))
    if rank == 0:
        discard_other_runs(a.checkpoints, fp, p.resume, "train.resume")
    return Run(params, a, device, precision, rank, fp, base_info_file)


def load_base(a: TrainPaths, p) -> Any:
    """The base model, seeded first: weights the base folder lacks (e5-small is saved without
    its unused BERT pooler) are initialised the same way every run, so an unchanged retrain
    publishes the same bytes and nothing downstream reruns."""
    set_seed(p.seed)
    model = load_model(str(a.base), "train.base_model")
    model.max_seq_length = p.max_seq_length
    return model


def training_args(r: Run, out: str, keys, precision: str, evaluate: bool = True):
    p = r.params.train
    return SentenceTransformerTrainingArguments(
        output_dir=out, num_train_epochs=p.epochs, per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size, learning_rate=r.params.lr, warmup_ratio=p.warmup_ratio,
        weight_decay=p.weight_decay, seed=p.seed, fp16=precision == "fp16", bf16=precision == "bf16",
        batch_sampler=concept_batch_sampler(keys, p.group_by_length), eval_strategy="steps" if evaluate else "no",
        eval_steps=p.eval_steps, save_strategy="steps", save_steps=p.save_steps,
        save_total_limit=p.save_total_limit, load_best_model_at_end=evaluate,
        metric_for_best_model=BEST_METRIC if evaluate else None, greater_is_better=True,
        logging_steps=p.logging_steps, logging_first_step=True, report_to="none", prompts=r.prompt,
        dataloader_drop_last=False,
        # CPU (also under torchrun/accelerate launch: DDP over gloo); GPUs: nccl, chosen by accelerate
        use_cpu=r.device == "cpu", gradient_checkpointing=p.gradient_checkpointing,
        ddp_backend="gloo" if r.device == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )


def training_set(r: Run, rows: dict[str, Any]) -> tuple[Any, Any, dict, Any, dict | None, pd.DataFrame]:
    """(dataset, sampler keys, counts, loss, round-1 state of mine.rounds: 2 or None, rows)."""
    params, p, a = r.params, r.params.train, r.paths
    train_df, round1_state = rows["train_df"], None
    if negatives_for(p) != "mined":
        graph = load_graph(a.edges, "train.negatives=sibling") if negatives_for(p) == "sibling" else None
        dataset, keys, info = build_examples(train_df, p, graph)
        return dataset, keys, info, build_loss(r.model, p), None, train_df
    train_df = load_negatives(a.negatives, train_df)   # data/negatives (+ mine.rounds: 2 round 1, resumable)
    if params.mine.rounds == 2:
        def fresh():
            m = load_base(a, p)
            if p.freeze_embeddings:
                freeze_word_embeddings(m)
            return m
        train_df, round1_state, round_info = round_one(
            train_df, params.mine, p, r.fingerprint, a.checkpoints / "round1", fresh,
            lambda out, k: training_args(r, out, k, r.precision, evaluate=False),
            lambda: mining_inputs(read_table(a.terms, "terms"), read_table(a.edges, "edges"),
                                  read_table(a.pairs / "concepts.parquet", "concepts"), rows["all_pairs"],
                                  params.mine.corpus_format))
    dataset, keys, info = mined_examples(train_df, p, params.mine)
    if params.mine.rounds == 2:
        info["iterative"] = round_info
    return dataset, keys, info, build_loss(r.model, p, mined=params.mine), round1_state, train_df


def baseline_metrics(r: Run, evaluator: DevRetrieval, dev_info: dict) -> dict[str, float]:
    """The untrained model's dev metrics (fp32), once per run fingerprint."""
    f = r.paths.checkpoints / "baseline.json"
    if f.is_file() and json.loads(f.read_text()).get("fingerprint") == r.fingerprint:
        return json.loads(f.read_text())["metrics"]
    log.info("baseline dev evaluation of %s (%d queries, %d documents)", r.params.train.base_model,
             dev_info["queries"], dev_info["corpus"])
    m = dev_summary(evaluator(r.model), "")
    write_json(f, {"fingerprint": r.fingerprint, "metrics": m})
    return m


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def fit(r: Run, args, dataset, loss, evaluator: DevRetrieval, baseline_fn, round1_state):
    """Resume point, baseline, dvclive, then ``trainer.train``; returns (trainer, callback, baseline)."""
    p, ckpt, rank0 = r.params.train, r.paths.checkpoints, args.process_index == 0
    if rank0:
        last_complete_checkpoint(ckpt, clean=True)
    barrier()  # rank 0 has cleaned up stale and incomplete checkpoints
    last = last_complete_checkpoint(ckpt, clean=False) if p.resume else None
    last = str(last) if last else None
    baseline = baseline_fn() if rank0 else None
    if rank0:
        log.info("baseline dev: %s", baseline)
    barrier()
    if round1_state is not None:   # mine.rounds: 2: the baseline is the base model; round 2 starts from round 1
        r.model.load_state_dict(round1_state)
    flow = LiveLog(open_live(r.paths.live, last, baseline) if rank0 else None, evaluator, last)
    trainer = SentenceTransformerTrainer(model=r.model, args=args, train_dataset=dataset, loss=loss,
                                         evaluator=evaluator, callbacks=[flow])
    try:
        with known_good_tokenizer(r.paths.base):   # the trainer reloads the best checkpoint at the end
            trainer.train(resume_from_checkpoint=last)
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"CUDA out of memory at step {trainer.state.global_step}: {lower_hint(p)} "
                        f"(estimate: python -m hpo_embed.gpu.estimate)") from None
    flow.start["train_s"] = time.time() - flow.start["time"]
    if flow.live is not None:
        flow.live.end()
    barrier()
    return trainer, flow, baseline


def summarize(r: Run, rows: dict, trainer, flow: LiveLog, evaluator: DevRetrieval, baseline: dict, n_examples: int,
              ex_info: dict, train_df: pd.DataFrame, precision_info, tokens: TokenCounter, t0: float) -> dict:
    """Every figure of the run (reports/train.json)."""
    p, state, world = r.params.train, trainer.state, trainer.args.world_size
    best_eval = max((e for e in state.log_history if BEST_METRIC in e), key=lambda e: e[BEST_METRIC])  # first max
    best = dev_summary(best_eval, "eval_")
    train_s, train_eval_s = flow.start["train_s"], evaluator.seconds - flow.start["eval_s"]
    done = state.global_step - flow.start["step"]   # 0 when resumed from the last step: nothing measured
    pairs_per_s = done * p.batch_size * world / max(1e-9, train_s - train_eval_s) if done else None
    if best["mrr"] < baseline["mrr"]:
        log.warning("best dev MRR %.4f is below the base model's %.4f", best["mrr"], baseline["mrr"])
    hpo = json.loads(r.paths.hpo_metrics.read_text()) if r.paths.hpo_metrics.is_file() else {}
    device = torch.cuda.get_device_name(0) if r.device == "cuda" else "cpu"
    metrics = {
        "pairs": len(train_df), "pairs_available": rows["available"], "concepts": int(train_df["hpo_id"].nunique()),
        "examples": n_examples, "languages": rows["langs"], "pairs_by": trained_counts(train_df), "loss": p.loss,
        **ex_info,
        "steps": state.global_step, "epochs": round(float(state.epoch or 0), 4),
        "resumed_from_step": flow.start["step"], "world_size": world, "device": device, "precision": r.precision,
        "wall_time_s": round(time.time() - t0, 1), "train_time_s": round(train_s, 1),
        "eval_time_s": round(evaluator.seconds, 1), "pairs_per_s": round(pairs_per_s, 2) if done else None,  # steps only
        "peak_share": peak_share(device, r.precision, tokens, r.model, train_s - train_eval_s),
        "precision_check": precision_info, "dev": rows["dev"][3], "baseline": baseline, "best": best,
        "best_step": best_eval["step"], "gain_mrr": round(best["mrr"] - baseline["mrr"], 6),
        "data_version": hpo.get("data_version", "unknown"), "base_model": p.base_model,
    }
    if "iterative" in ex_info:   # mine.rounds: 2: the run is both rounds (the trainer above saw round 2)
        r1 = ex_info["iterative"]
        metrics |= {"pairs": r1["round1_rows"] + r1["round2_rows"], "round1_steps": r1.get("round1_steps"),
                    "train_time_s": round(train_s + r1.get("round1_train_s", 0.0), 1)}
    return metrics


def run(params, a: TrainPaths) -> dict | None:
    t0, p = time.time(), params.train
    rows = load_rows(params, a)
    r = start_run(params, a)
    r.model = load_base(a, p)
    # train with the prompt a plain encode() applies (saved by the base_model stage), so the
    # fine-tuned model is used exactly as it was trained
    r.prompt = r.model.prompts.get(r.model.default_prompt_name) if r.model.default_prompt_name else None
    if p.freeze_embeddings:
        log.info("word embeddings frozen (%s parameters)", f"{freeze_word_embeddings(r.model):,}")
    dataset, keys, ex_info, loss, round1_state, train_df = training_set(r, rows)
    set_precision(loss, r.precision)  # cached_mnrl: its gradient pass in the training precision too
    q, corpus, rel, dev_info = rows["dev"]
    evaluator = DevRetrieval(q, corpus, rel, max(32, p.batch_size), r.rank == 0)
    precision_info = None
    if r.device == "cpu" and p.precision == "auto" and r.rank == 0 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        r.precision, precision_info = choose_cpu_precision(
            r.paths.checkpoints, r.fingerprint, r.model, loss, dataset, p.batch_size, r.prompt,
            lambda: baseline_metrics(r, evaluator, dev_info)["mrr"], lambda: dev_summary(evaluator(r.model), "")["mrr"])
        set_precision(loss, r.precision)
    tokens = TokenCounter().attach(r.model[0])
    args = training_args(r, str(r.paths.checkpoints), keys, r.precision)
    trainer, flow, baseline = fit(r, args, dataset, loss, evaluator, lambda: baseline_metrics(r, evaluator, dev_info),
                                  round1_state)
    if args.process_index != 0:
        return None
    metrics = summarize(r, rows, trainer, flow, evaluator, baseline, len(dataset), ex_info, train_df, precision_info,
                        tokens, t0)
    base_info = json.loads(r.base_info_file.read_text()) if r.base_info_file.is_file() else {"source": str(a.base)}
    metrics["base_model_info"] = {k: base_info.get(k) for k in ("source", "revision", "prompt")}
    write_model(trainer.model, a.out, model_card(p, params.lr, metrics["data_version"], rows["langs"], metrics,
                                                 base_info), rows["langs"], base_info.get("licence"), trainer.state.log_history)
    write_json(a.report, metrics)
    write_json(a.metrics, headline(metrics))
    finish(r.paths.checkpoints)
    log.info("dev MRR %.4f -> %.4f (best at step %d); %s", baseline["mrr"], metrics["best"]["mrr"],
             metrics["best_step"], a.out)
    return metrics
