"""The mine stage's recipe: hard negatives for exactly the train stage's rows.

For the rows the train stage uses (train.pair_types, train.max_train_pairs, train.seed),
negatives from the ontology (siblings/cousins) and/or the base model's nearest corpus
texts, behind the false-negative guard (docs/negatives.md). When train.negatives is not
``mined`` it publishes the selected rows only (a stub in seconds), so the default pipeline
pays almost nothing for the stage.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa

from hpo_embed.common import UserError, publish_dir, temp_sibling, write_json, write_parquet
from hpo_embed.embedding import model_hash
from hpo_embed.models.loader import load_sentence_transformer
from hpo_embed.negatives.anchors import select_training_rows
from hpo_embed.negatives.dataset import mining_inputs
from hpo_embed.negatives.mining import mine
from hpo_embed.schemas import read_table
from hpo_embed.training.losses import negatives_for

log = logging.getLogger("hpo_embed.mine")


def headline(report: dict) -> dict:
    """Few keys (the metrics budget); every count is in the report."""
    if report.get("skipped"):
        return {"skipped": True}
    return {"negatives_per_anchor": report["negatives_per_anchor"],
            "from_ontology": report["by_source"].get("ontology", 0), "from_model": report["by_source"].get("model", 0),
            "guard_removed": sum(report["guard_removed"].values()), "mining_s": report["seconds"]["total_s"]}


def publish_negatives(out: Path, df: pd.DataFrame) -> None:
    """negatives.parquet in a fresh folder swapped into ``out`` (never half-written)."""
    tmp = temp_sibling(out)
    tmp.mkdir(parents=True)
    write_parquet(tmp / "negatives.parquet", pa.Table.from_pandas(df, preserve_index=False))
    publish_dir(tmp, out)


def run(params, pairs_dir: Path, terms: Path, edges: Path, model_dir: Path, out: Path, metrics: Path,
        report_path: Path, cache: Path | None) -> dict:
    t0 = time.time()
    p, m = params.train, params.mine
    pairs = read_table(pairs_dir / "train.parquet", "pairs")
    rows, available = select_training_rows(pairs, p.pair_types, p.max_train_pairs, p.seed, pairs_dir / "train.parquet",
                                           p.language_weights)
    if negatives_for(p) != "mined":
        log.info("train.negatives is %s, not mined: nothing to mine (stub output)", negatives_for(p))
        publish_negatives(out, rows[["anchor", "positive", "hpo_id"]])
        report = {"skipped": True, "reason": f"train.negatives is {p.negatives!r}", "anchors": len(rows)}
    else:
        concepts = read_table(pairs_dir / "concepts.parquet", "concepts")
        corpus, texts, onto = mining_inputs(read_table(terms, "terms"), read_table(edges, "edges"), concepts, pairs,
                                            m.corpus_format)
        model = None
        if "model" in m.sources or m.sampling == "top" or m.relative_margin is not None \
                or m.absolute_margin is not None:
            if not model_dir.is_dir():
                raise UserError(f"{model_dir}: no base model; run the base_model stage first (dvc repro base_model)")
            model = load_sentence_transformer(str(model_dir), "train.base_model")
            model.max_seq_length = p.max_seq_length
        df, report = mine(rows[["anchor", "positive", "hpo_id"]], corpus, texts, onto, m, model=model,
                          cache=cache, model_key=model_hash(model_dir, p.max_seq_length) if cache else None)
        publish_negatives(out, df)
        report |= {"rows_available": available, "params": m.model_dump(),
                   "examples": df.head(20)[["anchor", "positive", "negative_1", "negative_1_source"]]
                   .to_dict("records")}
    report["wall_s"] = round(time.time() - t0, 1)
    write_json(report_path, report)
    write_json(metrics, headline(report))
    log.info("mine: %s", headline(report))
    return report
