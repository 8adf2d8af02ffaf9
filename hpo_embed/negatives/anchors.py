"""The training rows: one function shared by the mine and train stages so that the
anchors negatives are mined for are exactly the rows the trainer uses."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from hpo_embed.common import UserError


def select_training_rows(train_df: pd.DataFrame, pair_types: list[str], max_rows: int | None, seed: int,
                         source: Path | str = "data/pairs/train.parquet") -> tuple[pd.DataFrame, int]:
    """``(rows, available)``: the rows of ``pair_types`` (all rows when the frame has no
    ``pair_type`` column), capped to ``max_rows`` by a seeded random sample, index reset.
    ``available`` is the count before the cap."""
    if train_df.empty:
        raise UserError(f"{source}: no training pairs")
    if "pair_type" in train_df.columns:
        train_df = train_df[train_df["pair_type"].isin(pair_types)]
        if train_df.empty:
            raise UserError(f"params.yaml: train.pair_types: no training pairs of type(s) "
                            f"{', '.join(pair_types)} in {source}")
    available = len(train_df)
    if max_rows and len(train_df) > max_rows:
        train_df = train_df.sample(n=max_rows, random_state=seed)
    return train_df.reset_index(drop=True), available
