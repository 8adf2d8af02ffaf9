"""The retrieval corpus: one English document per selected HPO concept.

Shared by the train stage (dev evaluation) and the benchmark stage, so both score
against exactly the same documents. ``fmt``:
- ``label``: the English label only;
- ``label_synonyms``: label and its EXACT synonyms;
- ``label_synonyms_definition``: label, EXACT synonyms and the definition (the
  document format phentrieve indexes).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from hpo_embed.common import UserError
from hpo_embed.schemas import read_table

FORMATS = ("label", "label_synonyms", "label_synonyms_definition")


def load_terms(path: Path, selected_only: bool = True) -> pd.DataFrame:
    df = read_table(path, "terms")
    return df[df["selected"]].reset_index(drop=True) if selected_only else df


def document(row: dict, fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"corpus format {fmt!r} is not one of: {', '.join(FORMATS)}")
    parts = [row["label"]]
    if fmt != "label":
        syns = [s["text"] for s in (row.get("synonyms") if row.get("synonyms") is not None else [])
                if s["scope"] == "EXACT" and s["text"] != row["label"]]
        if syns:
            parts.append("; ".join(syns))
    definition = row.get("definition")
    if fmt == "label_synonyms_definition" and isinstance(definition, str) and definition:
        parts.append(definition)
    return ". ".join(p.rstrip(".") for p in parts)


def build_corpus(terms: pd.DataFrame, fmt: str = "label") -> dict[str, str]:
    """``{hpo_id: document}`` for every row of ``terms`` in id order."""
    return {r["id"]: document(r, fmt) for r in terms.sort_values("id").to_dict("records")}
