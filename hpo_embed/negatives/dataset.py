"""The mined-negatives training set: the mine stage's rows checked against the training
rows, the n-tuple columns (anchor, positive, negative_1..n; ``negative`` for the triplet
loss), a seeded ``mine.easy_fraction`` of rows on their easy negatives."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset

from hpo_embed.common import UserError
from hpo_embed.negatives.mining import Corpus, known_texts, mining_corpus
from hpo_embed.ontology.graph import IsAGraph
from hpo_embed.params import MineParams
from hpo_embed.training.losses import MINED_LOSSES
from hpo_embed.training.sampling import row_keys

NEGATIVES_FILE = "negatives.parquet"




def mining_inputs(terms: pd.DataFrame, edges: pd.DataFrame, concepts: pd.DataFrame, pairs: pd.DataFrame,
                  corpus_format: str) -> tuple[Corpus, dict[str, set[str]], IsAGraph]:
    """The corpus (English texts of train-split concepts only: dev/test/bench concepts are
    never negatives), every known text per concept (the guard) and the ontology."""
    train_ids = set(concepts.loc[concepts["split"] == "train", "hpo_id"].astype(str))
    return mining_corpus(terms, train_ids, corpus_format), known_texts(terms, pairs), IsAGraph.from_table(edges)


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


def mined_examples(negs: pd.DataFrame, p, hn: MineParams):
    """``(Dataset, sampler keys, info)`` of the n-tuple training set. Same rows (hence the
    same step budget) as without negatives; rows chosen by ``hn.easy_fraction`` use their
    easy negatives."""
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
