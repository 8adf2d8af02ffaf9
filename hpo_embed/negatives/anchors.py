"""The training rows: one function shared by the mine and train stages so that the
anchors negatives are mined for are exactly the rows the trainer uses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hpo_embed.common import UserError


def pair_language(train_df: pd.DataFrame) -> pd.Series:
    """The language a pair teaches: its non-English side (``en`` for English-only pairs)."""
    anchor, positive = train_df["lang_anchor"], train_df["lang_positive"]
    return anchor.where(anchor != "en", positive)


def select_training_rows(train_df: pd.DataFrame, pair_types: list[str], max_rows: int | None, seed: int,
                         source: Path | str = "data/pairs/train.parquet",
                         language_weights: dict[str, float] | None = None) -> tuple[pd.DataFrame, int]:
    """``(rows, available)``: the rows of ``pair_types`` (all rows when the frame has no
    ``pair_type`` column), capped to ``max_rows`` by a seeded random sample, index reset.
    ``language_weights`` ({lang: w}, absent = 1) make a pair of that language w times as
    likely to be drawn under the cap (train.language_weights); without weights the sample is
    uniform. ``available`` is the count before the cap."""
    if train_df.empty:
        raise UserError(f"{source}: no training pairs")
    if "pair_type" in train_df.columns:
        train_df = train_df[train_df["pair_type"].isin(pair_types)]
        if train_df.empty:
            raise UserError(f"params.yaml: train.pair_types: no training pairs of type(s) "
                            f"{', '.join(pair_types)} in {source}")
    available = len(train_df)
    if max_rows and len(train_df) > max_rows and language_weights:
        if not {"lang_anchor", "lang_positive"} <= set(train_df.columns):
            raise UserError(f"{source}: no lang_anchor / lang_positive columns for train.language_weights")
        # weighted sampling without replacement (Efraimidis-Spirakis: exponential keys / weight,
        # smallest first); pandas' weighted sample refuses weights this uneven
        weights = pair_language(train_df).map(language_weights).fillna(1.0).to_numpy(dtype=float)
        keys = np.random.default_rng(seed).exponential(size=len(train_df)) / weights
        train_df = train_df.iloc[np.argsort(keys, kind="stable")[:max_rows]]   # drawn order, like sample()
    elif max_rows and len(train_df) > max_rows:
        train_df = train_df.sample(n=max_rows, random_state=seed)
    return train_df.reset_index(drop=True), available
