"""Training with mined negatives: the n-tuple dataset, the losses, the iterative round.

Called from the train stage when ``train.negatives: mined``:
- ``load_negatives``: data/negatives/negatives.parquet, checked row by row against the
  rows the trainer uses (``select_training_rows``);
- ``build_examples``: columns anchor, positive, negative_1..n (``negative`` for the
  triplet loss); a seeded ``mine.easy_fraction`` of the rows take their easy negatives;
- ``build_loss``: MNRL / CachedMNRL with the negatives as extra columns and the optional
  hardness weighting, GIST, or TripletLoss (cosine distance, ``train.margin``);
- ``round_one``: ``mine.rounds: 2`` -- train the first half of the rows, mine the second
  half again with that model, accumulate; resumable (see docs/negatives.md).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from hpo_embed.negatives.mining import Corpus, build_corpus, concept_texts, mine
from hpo_embed.negatives.ontology import Ontology
from hpo_embed.params import MineParams
from hpo_embed.checkpoints import last_complete_checkpoint
from hpo_embed.common import UserError, atomic_write_bytes, write_json
from hpo_embed.models.loader import load_sentence_transformer

log = logging.getLogger("hpo_embed.negatives")

NEGATIVES_FILE = "negatives.parquet"
MINED_LOSSES = ("mnrl", "cached_mnrl", "gist", "triplet")


def mining_inputs(terms: pd.DataFrame, edges: pd.DataFrame, concepts: pd.DataFrame, pairs: pd.DataFrame,
                  corpus_format: str) -> tuple[Corpus, dict[str, set[str]], Ontology]:
    """The corpus (English texts of train-split concepts only: dev/test/bench concepts are
    never negatives), every known text per concept (the guard) and the ontology."""
    train_ids = set(concepts.loc[concepts["split"] == "train", "hpo_id"].astype(str))
    return build_corpus(terms, train_ids, corpus_format), concept_texts(terms, pairs), Ontology(edges)


def load_negatives(folder: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """The mine stage's output for exactly these training rows (else a one-line UserError)."""
    path = Path(folder) / NEGATIVES_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing; train.negatives is mined: run the mine stage (dvc repro mine)")
    df = pd.read_parquet(path)
    if "negative_1" not in df.columns:
        raise UserError(f"{path}: no mined negatives (the mine stage ran while train.negatives was not "
                        f"mined); rerun it: dvc repro mine")
    same = len(df) == len(rows) and all(
        (df[c].astype(str).to_numpy() == rows[c].astype(str).to_numpy()).all() for c in ("anchor", "positive", "hpo_id"))
    if not same:
        raise UserError(f"{path}: mined for other training rows (train.pair_types / max_train_pairs / seed "
                        f"changed?); rerun the mine stage: dvc repro mine")
    return df


def n_negatives(df: pd.DataFrame) -> int:
    return sum(1 for c in df.columns if c.startswith("negative_") and c.removeprefix("negative_").isdigit())


def easy_rows(n_rows: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the rows that take easy negatives: exactly round(fraction * n), seeded."""
    mask = np.zeros(n_rows, dtype=bool)
    mask[np.random.default_rng([seed, 7]).permutation(n_rows)[:int(round(fraction * n_rows))]] = True
    return mask


def build_examples(negs: pd.DataFrame, p, hn: MineParams):
    """``(Dataset, sampler keys, info)`` of the n-tuple training set. Same rows (hence the
    same step budget) as without negatives; rows chosen by ``hn.easy_fraction`` use their
    easy negatives."""
    from datasets import Dataset

    from hpo_embed.training.sampling import row_keys

    n = n_negatives(negs)
    if p.loss not in MINED_LOSSES:
        raise UserError(f"params.yaml: train.negatives: mined needs train.loss in {', '.join(MINED_LOSSES)}, "
                        f"got {p.loss!r}")
    if p.loss == "triplet" and n != 1:
        raise UserError(f"params.yaml: mine.num_negatives: the triplet loss takes one negative, got {n}")
    easy = easy_rows(len(negs), hn.easy_fraction, hn.seed)
    cols = {"anchor": negs["anchor"].astype(str).tolist(), "positive": negs["positive"].astype(str).tolist()}
    neg_ids = []
    for k in range(1, n + 1):
        name = "negative" if p.loss == "triplet" else f"negative_{k}"
        cols[name] = np.where(easy, negs[f"easy_{k}"].astype(str), negs[f"negative_{k}"].astype(str)).tolist()
        neg_ids.append(np.where(easy, negs[f"easy_{k}_id"].astype(str), negs[f"negative_{k}_id"].astype(str)))
    ids = negs["hpo_id"].astype(str).tolist()
    concepts = [(c, *(nid[i] for nid in neg_ids)) for i, c in enumerate(ids)]
    texts = [tuple(cols[c][i] for c in cols) for i in range(len(ids))]
    info: dict[str, Any] = {"negatives": "mined", "negatives_per_row": n, "easy_rows": int(easy.sum()),
                            "hard_rows": int((~easy).sum())}
    for k in range(1, n + 1):
        src = negs.loc[~easy, f"negative_{k}_source"].value_counts().to_dict()
        for s, c in src.items():
            info[f"hard_from_{s}"] = info.get(f"hard_from_{s}", 0) + int(c)
    return Dataset.from_dict(cols), row_keys(concepts, texts), info


def build_loss(model, p, hn: MineParams):
    """The loss for ``train.negatives: mined`` (the n-tuple columns are extra negatives)."""
    from sentence_transformers.sentence_transformer import losses

    from hpo_embed.training.losses import CachedMNRL
    from hpo_embed.training.losses import build_loss as plain_loss

    hard = {} if hn.hardness_mode is None else {"hardness_mode": hn.hardness_mode,
                                                "hardness_strength": hn.hardness_strength}
    if p.loss == "mnrl":
        loss = losses.MultipleNegativesRankingLoss(model, **hard)
    elif p.loss == "cached_mnrl":
        import os
        loss = CachedMNRL(model, mini_batch_size=p.mini_batch_size, show_progress_bar=False,
                          gather_across_devices=int(os.environ.get("WORLD_SIZE", "1")) > 1, **hard)
    elif p.loss == "triplet":
        metric = losses.TripletDistanceMetric.COSINE if hn.triplet_distance == "cosine" \
            else losses.TripletDistanceMetric.EUCLIDEAN
        margin = p.margin if p.margin is not None else (0.1 if hn.triplet_distance == "cosine" else 5.0)
        loss = losses.TripletLoss(model, distance_metric=metric, triplet_margin=margin)
    elif p.loss == "gist":
        return plain_loss(model, p)
    else:
        raise UserError(f"params.yaml: train.negatives: mined needs train.loss in {', '.join(MINED_LOSSES)}, "
                        f"got {p.loss!r}")
    if p.matryoshka_dims:
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=sorted(set(p.matryoshka_dims), reverse=True))
    return loss


# --------------------------------------------------------------------------- iterative

def split_halves(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of round 1 and round 2: a seeded half each, every row trained exactly once."""
    perm = np.random.default_rng([seed, 2]).permutation(n_rows)
    h = n_rows // 2
    return np.sort(perm[:h]), np.sort(perm[h:])


def accumulate(round1: pd.DataFrame, round2: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Round-2 rows: half keep their base-model negatives (round 1), half take the negatives
    mined with the round-1 model (seeded); easy columns unchanged."""
    out = round2.copy()
    keep = np.random.default_rng([seed, 3]).random(len(out)) < 0.5
    for c in [c for c in round2.columns if c.startswith("negative_")]:
        out[c] = np.where(keep, round1[c].to_numpy(), round2[c].to_numpy())
    out["round"] = np.where(keep, 1, 2)
    return out


def round_one(negs: pd.DataFrame, hn: MineParams, p, fingerprint: str, folder: Path,
              load_model: Callable[[], Any], make_args: Callable[[str, list], Any],
              mining_data: Callable[[], tuple[Corpus, dict, Ontology]]) -> tuple[pd.DataFrame, dict, dict]:
    """Round 1 of ``mine.rounds: 2`` and the round-2 mining; returns ``(round-2 rows with
    accumulated negatives, round-1 model state_dict, info)``. The train stage then trains
    the round-2 rows from that state (its own checkpoints and resume as usual).

    Resumable, in ``folder`` (= models/checkpoints/round1): ``run.json`` (fingerprint; a
    different one clears the folder), ``checkpoints/`` (the Trainer's, resumed inside round
    1), ``model/`` + ``done.json`` (round 1 finished: never trained again) and
    ``negatives_round2.parquet`` (written atomically: never mined again)."""
    import os

    from sentence_transformers import SentenceTransformerTrainer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("params.yaml: mine.rounds: 2 runs in one process; launch without torchrun/accelerate "
                        "or set mine.rounds: 1")
    folder = Path(folder)
    run_file = folder / "run.json"
    if folder.is_dir() and (not p.resume or not run_file.is_file()
                            or json.loads(run_file.read_text()).get("fingerprint") != fingerprint):
        log.warning("round 1: %s, clearing %s", "train.resume is false" if not p.resume else
                    "params or inputs changed", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not run_file.is_file():
        write_json(run_file, {"fingerprint": fingerprint})
    r1_rows, r2_rows = split_halves(len(negs), hn.seed)
    info: dict[str, Any] = {"round1_rows": len(r1_rows), "round2_rows": len(r2_rows)}
    done, model_dir = folder / "done.json", folder / "model"
    if done.is_file():
        info |= json.loads(done.read_text()) | {"round1_resumed": "skipped (done)"}
        log.info("round 1 already done (%s): not trained again", done)
    else:
        t = time.time()
        model = load_model()
        ds, keys, _ = build_examples(negs.iloc[r1_rows].reset_index(drop=True), p, hn)
        ckpt = folder / "checkpoints"
        last = last_complete_checkpoint(ckpt, clean=True) if p.resume and ckpt.is_dir() else None
        trainer = SentenceTransformerTrainer(model=model, args=make_args(str(ckpt), keys), train_dataset=ds,
                                             loss=build_loss(model, p, hn))
        log.info("round 1: training %d rows%s", len(ds), f" (resuming {last.name})" if last else "")
        trainer.train(resume_from_checkpoint=str(last) if last else None)
        tmp = folder / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.model.save(str(tmp), create_model_card=False)
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp.rename(model_dir)
        info |= {"round1_steps": int(trainer.state.global_step), "round1_train_s": round(time.time() - t, 1)}
        write_json(done, {k: v for k, v in info.items() if k.startswith("round1_")})
        shutil.rmtree(ckpt, ignore_errors=True)
        del trainer, model
    r1_model = load_sentence_transformer(model_dir, str(model_dir))
    mined_file = folder / "negatives_round2.parquet"
    part = negs.iloc[r2_rows].reset_index(drop=True)
    if mined_file.is_file():
        round2 = pd.read_parquet(mined_file)
        info["round2_mining"] = "reused"
    else:
        corpus, texts, onto = mining_data()
        round2, report = mine(part[["anchor", "positive", "hpo_id"]], corpus, texts, onto, hn.mining(),
                              model=r1_model, round_no=2, progress=True)
        import io
        buf = io.BytesIO()
        round2.to_parquet(buf, index=False)
        atomic_write_bytes(mined_file, buf.getvalue())
        info["round2_mining"] = {k: report[k] for k in ("by_source", "guard_removed", "margin_removed", "seconds")}
    state = {k: v.detach().clone() for k, v in r1_model.state_dict().items()}
    del r1_model
    return accumulate(part, round2, hn.seed), state, info
