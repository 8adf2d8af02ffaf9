"""One schema per Parquet table of the pipeline, and the one reader that checks it.

The writers (parse_hpo: terms, edges; pairs: train/dev/test pairs, concepts, queries,
shared_texts) write these schemas; every reader goes through ``read_table``, which checks
that the file exists, reads, and has the columns its readers need with the schema's types.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hpo_embed.common import UserError

SYNONYM_TYPE = pa.struct([("text", pa.string()), ("scope", pa.string()), ("type", pa.string())])
TERMS_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("label", pa.string()),
    ("definition", pa.string()),
    ("synonyms", pa.list_(SYNONYM_TYPE)),
    ("xrefs", pa.list_(pa.string())),
    ("parents", pa.list_(pa.string())),
    ("depth", pa.int32()),
    ("is_obsolete", pa.bool_()),
    ("replaced_by", pa.string()),
    ("branch", pa.string()),
    ("branches", pa.list_(pa.string())),
    ("selected", pa.bool_()),
])
EDGES_SCHEMA = pa.schema([("child", pa.string()), ("parent", pa.string())])
PAIRS_SCHEMA = pa.schema([
    ("anchor", pa.string()),
    ("positive", pa.string()),
    ("hpo_id", pa.string()),
    ("pair_type", pa.string()),
    ("lang_anchor", pa.string()),
    ("lang_positive", pa.string()),
    ("source", pa.string()),
    ("branch", pa.string()),
    ("synonym_type", pa.string()),
])
CONCEPTS_SCHEMA = pa.schema([("hpo_id", pa.string()), ("split", pa.string()), ("branch", pa.string())])
QUERIES_SCHEMA = pa.schema([
    ("text", pa.string()),
    ("hpo_id", pa.string()),
    ("lang", pa.string()),
    ("kind", pa.string()),
    ("synonym_type", pa.string()),
    ("source", pa.string()),
    ("split", pa.string()),
])
SHARED_SCHEMA = pa.schema([("text", pa.string()), ("hpo_ids", pa.list_(pa.string())),
                           ("langs", pa.list_(pa.string()))])
CANDIDATES_SCHEMA = pa.schema([   # the reranker's bi-encoder candidates (rerank_candidates)
    ("set", pa.string()), ("lang", pa.string()), ("query", pa.string()), ("expected", pa.list_(pa.string())),
    ("branch", pa.string()), ("gold_rank", pa.int64()), ("cand_ids", pa.list_(pa.string())),
    ("cand_scores", pa.list_(pa.float64())),
])

# table name -> (schema, the stage that writes it, the columns every reader needs)
TABLES: dict[str, tuple[pa.Schema, str, tuple[str, ...]]] = {
    "terms": (TERMS_SCHEMA, "parse_hpo", ("id", "label")),
    "edges": (EDGES_SCHEMA, "parse_hpo", ("child", "parent")),
    "pairs": (PAIRS_SCHEMA, "pairs", ("anchor", "positive", "hpo_id")),
    "concepts": (CONCEPTS_SCHEMA, "pairs", ("hpo_id", "split")),
    "queries": (QUERIES_SCHEMA, "pairs", ("text", "hpo_id", "lang", "split")),
    "candidates": (CANDIDATES_SCHEMA, "rerank_candidates", ("set", "query", "expected", "cand_ids")),
}


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_dictionary(actual):
        actual = actual.value_type
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_null(actual)
    if pa.types.is_list(expected):
        return pa.types.is_list(actual) or pa.types.is_large_list(actual) or pa.types.is_null(actual)
    return actual == expected or pa.types.is_null(actual)


def read_table(path: Path | str, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    """``path`` as a DataFrame (only ``columns`` when given), checked against the schema of
    ``table``: a missing file, an unreadable one, a missing column or a column of another
    type is a one-line UserError naming the file."""
    schema, producer, required = TABLES[table]
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing; run the {producer} stage first (dvc repro {producer})")
    try:
        have = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    missing = [c for c in required if c not in have.names]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    for name in have.names:
        if name in schema.names and not _compatible(have.field(name).type, schema.field(name).type):
            raise UserError(f"{path}: column {name} is {have.field(name).type}, expected {schema.field(name).type}")
    return pd.read_parquet(path, columns=columns)
