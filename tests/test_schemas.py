"""One schema per Parquet table, read through one function (hpo_embed.schemas.read_table)."""
from __future__ import annotations

import pandas as pd
import pytest

from hpo_embed.common import UserError
from hpo_embed.schemas import QUERIES_SCHEMA, TABLES, read_table


def test_a_good_queries_file_reads(tmp_path):
    path = tmp_path / "queries.parquet"
    pd.DataFrame([{"text": "Fieber", "hpo_id": "HP:0001945", "lang": "de", "split": "test"}]).to_parquet(path)
    df = read_table(path, "queries")
    assert df.to_dict("records") == [{"text": "Fieber", "hpo_id": "HP:0001945", "lang": "de", "split": "test"}]
    assert list(read_table(path, "queries", ["text"]).columns) == ["text"]


@pytest.mark.parametrize("frame, message", [
    (None, "queries.parquet: missing; run the pairs stage first (dvc repro pairs)"),
    (pd.DataFrame({"text": ["a"], "hpo_id": ["HP:1"], "split": ["test"]}), "queries.parquet: missing column(s) lang"),
    (pd.DataFrame({"text": ["a"], "hpo_id": [1], "lang": ["de"], "split": ["test"]}),
     "queries.parquet: column hpo_id is int64, expected string"),
])
def test_bad_queries_file_is_one_line_naming_it(tmp_path, frame, message):
    path = tmp_path / "queries.parquet"
    if frame is not None:
        frame.to_parquet(path)
    with pytest.raises(UserError) as exc:
        read_table(path, "queries")
    assert str(exc.value) == f"{tmp_path}/{message}"


def test_not_parquet_is_a_user_error(tmp_path):
    path = tmp_path / "edges.parquet"
    path.write_text("child,parent\n")
    with pytest.raises(UserError, match="edges.parquet: not a readable parquet file"):
        read_table(path, "edges")


def test_every_table_requires_columns_of_its_schema():
    for name, (schema, producer, required) in TABLES.items():
        assert producer in ("parse_hpo", "pairs", "rerank_candidates") and set(required) <= set(schema.names), name
    assert QUERIES_SCHEMA.names[:3] == ["text", "hpo_id", "lang"]
