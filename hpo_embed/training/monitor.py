"""What the train stage watches while it trains: dev retrieval (the benchmark's MRR, HR@k and
NDCG@10 on the dev corpus), the dvclive curves (cut back to the checkpoint on resume), the
achieved share of the CPU's peak FLOP/s."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from dvclive import Live
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
from transformers import TrainerCallback

from hpo_embed.common import atomic_write_text
from hpo_embed.hardware import TokenCounter, peak_flops
from hpo_embed.retrieval.metrics import dev_retrieval

log = logging.getLogger("hpo_embed.train")


CUTS = ("mrr", "hr@1", "hr@10", "ndcg@10")   # hpo_embed.retrieval.metrics.dev_retrieval


EVAL_NAME = "dev"


BEST_METRIC = f"eval_{EVAL_NAME}_mrr"


def truncate_live_history(live_dir: Path, step: int) -> int:
    """Drop the dvclive curve rows (``plots/metrics/**/*.tsv``) logged after ``step``, the
    checkpoint a run resumes from, so the resumed steps are not plotted twice. Returns the
    number of rows removed."""
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


def drop_cut_summary(live_dir: Path) -> bool:
    """Remove dvclive's summary (``metrics.json``) when a kill cut it short while it was being
    written: dvclive rewrites it whole at the next step, and reading it on resume would fail on
    the broken JSON. Returns whether it was removed."""
    summary = Path(live_dir) / "metrics.json"
    if not summary.exists():
        return False
    try:
        json.loads(summary.read_text(encoding="utf-8"))
        return False
    except (UnicodeDecodeError, json.JSONDecodeError):
        summary.unlink()
        log.info("dvclive: removed %s, cut short by the interrupted run", summary)
        return True


def dev_summary(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: round(float(metrics[f"{prefix}{EVAL_NAME}_{k}"]), 6) for k in CUTS}


class DevRetrieval(SentenceEvaluator):
    """A sentence-transformers evaluator returning ``dev_{mrr,hr@1,hr@10,ndcg@10}`` from
    hpo_embed.retrieval.metrics.dev_retrieval (one relevant document per query); ``seconds``
    accumulates the time spent evaluating (not training time)."""

    def __init__(self, queries: dict[str, str], corpus: dict[str, str], relevant: dict[str, set[str]],
                 batch_size: int, show_progress_bar: bool):
        super().__init__()
        self.name, self.primary_metric, self.seconds = EVAL_NAME, "mrr", 0.0
        self.queries, self.corpus = queries, corpus
        self.qids, self.cids = list(queries), list(corpus)
        pos = {c: i for i, c in enumerate(self.cids)}
        self.gold = np.asarray([pos[next(iter(relevant[q]))] for q in self.qids])
        self.kw = dict(batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                       show_progress_bar=show_progress_bar)

    def __call__(self, model, output_path=None, epoch=-1, steps=-1, *args, **kwargs):
        t = time.time()
        try:
            q = model.encode_query([self.queries[i] for i in self.qids], **self.kw)
            c = model.encode_document([self.corpus[i] for i in self.cids], **self.kw)
            return self.prefix_name_to_metrics(dev_retrieval(q, c, self.gold), self.name)
        finally:
            self.seconds += time.time() - t


class LiveLog(TrainerCallback):
    """dvclive logging at the global step, an evaluation at the last step, the start of
    training (step, time, evaluation seconds so far) in ``start``."""

    def __init__(self, live, evaluator: DevRetrieval, resumed_from: str | None):
        self.live, self.evaluator, self.resumed_from = live, evaluator, resumed_from
        self.start: dict = {}

    def on_train_begin(self, args, state, control, **kw):
        # the baseline evaluation before this point is not training time
        self.start = {"step": state.global_step, "time": time.time(), "eval_s": self.evaluator.seconds}
        if state.global_step:
            log.info("resumed from %s at global step %d", self.resumed_from, state.global_step)

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= state.max_steps and state.global_step % args.eval_steps:
            control.should_evaluate = True

    def on_log(self, args, state, control, logs=None, **kw):
        if self.live is None or not logs:
            return
        self.live.step = state.global_step
        for k, v in logs.items():
            if k in ("loss", "learning_rate", "grad_norm"):
                self.live.log_metric(f"train/{k}", float(v))
            elif k.startswith(f"eval_{EVAL_NAME}_") and k.removeprefix(f"eval_{EVAL_NAME}_") in CUTS:
                self.live.log_metric(f"eval/dev_{k.removeprefix(f'eval_{EVAL_NAME}_')}", float(v))
        self.live.next_step()


def open_live(folder: Path, resumed_from: str | None, baseline: dict[str, float]):
    """The dvclive run; a resumed run continues its curves from the checkpoint's step, a
    fresh one starts with the baseline at step 0."""
    if resumed_from is not None:   # steps logged after the checkpoint are trained (and logged) again
        truncate_live_history(folder, int(Path(resumed_from).name.rsplit("-", 1)[1]))
        drop_cut_summary(folder)
    live = Live(dir=str(folder), resume=resumed_from is not None, save_dvc_exp=False, dvcyaml=None)
    if resumed_from is None:
        live.step = 0
        for k, v in baseline.items():
            live.log_metric(f"eval/dev_{k}", v)
        live.next_step()
    return live


def peak_share(device: str, precision: str, tokens: TokenCounter, model, seconds: float) -> float | None:
    """Achieved matrix-multiply FLOP/s of the training steps over the CPU's peak for the
    precision (``hpo_embed.hardware``); None on GPUs and for models without a BERT config."""
    cfg = getattr(getattr(model[0], "auto_model", None), "config", None)
    if device != "cpu" or seconds <= 0 or not tokens.tokens or not hasattr(cfg, "intermediate_size"):
        return None
    flops = tokens.flops(cfg)
    return float(f"{flops / seconds / peak_flops(precision, torch.get_num_threads()):.4g}")
