"""Stage mine: hard negatives for the training rows (``python -m stages.mine``).

For exactly the rows the train stage uses (train.pair_types, train.max_train_pairs,
train.seed), negatives from the ontology (siblings/cousins) and/or the base model's nearest
corpus texts, behind the false-negative guard (hpo_embed/negatives, docs/negatives.md).
Writes data/negatives/negatives.parquet, metrics/mine.json (headline) and
reports/mine.json (every count). When train.negatives is not ``mined`` it writes a stub in
seconds (nothing to mine), so the default pipeline pays almost nothing for it.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from stages.common import ROOT, UserError, atomic_write_bytes, run_stage, write_json

log = logging.getLogger("hpo_embed.mine")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stages.mine", description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--pairs", type=Path, required=True, help="folder with train.parquet and concepts.parquet")
    ap.add_argument("--terms", type=Path, required=True)
    ap.add_argument("--edges", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True, help="the base_model stage's model folder")
    ap.add_argument("--out", type=Path, required=True, help="output folder (negatives.parquet)")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None,
                    help="embedding cache folder (not a DVC output; keyed by model files + texts)")
    return ap.parse_args(argv)


def headline(report: dict) -> dict:
    """Five keys (the metrics budget); every count is in reports/mine.json."""
    if report.get("skipped"):
        return {"skipped": True}
    return {"negatives_per_anchor": report["negatives_per_anchor"],
            "from_ontology": report["by_source"].get("ontology", 0), "from_model": report["by_source"].get("model", 0),
            "guard_removed": sum(report["guard_removed"].values()), "mining_s": report["seconds"]["total_s"]}


def model_key(folder: Path, max_seq_length: int) -> str:
    """Identity of the encoder for the embedding cache: every file's bytes (weights, config,
    prompts, tokenizer) and the token limit."""
    import hashlib
    h = hashlib.sha256(str(max_seq_length).encode())
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def publish(out: Path, df: pd.DataFrame) -> None:
    """Write the folder next to ``out`` and swap it in (never half-written)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(tmp / "negatives.parquet", buf.getvalue())
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def run(params, a: argparse.Namespace) -> dict:
    from hpo_embed.negatives.anchors import select_training_rows
    from hpo_embed.negatives.training import mining_inputs
    from stages.dev_set import read_parquet
    from stages.losses import negatives_for

    t0 = time.time()
    p, m = params.train, params.mine
    pairs = read_parquet(a.pairs / "train.parquet", ("anchor", "positive", "hpo_id"))
    rows, available = select_training_rows(pairs, p.pair_types, p.max_train_pairs, p.seed, a.pairs / "train.parquet")
    if negatives_for(p) != "mined":
        log.info("train.negatives is %s, not mined: nothing to mine (stub output)", negatives_for(p))
        publish(a.out, rows[["anchor", "positive", "hpo_id"]])
        report = {"skipped": True, "reason": f"train.negatives is {p.negatives!r}", "anchors": len(rows)}
    else:
        from hpo_embed.negatives.mining import mine
        concepts = read_parquet(a.pairs / "concepts.parquet", ("hpo_id", "split"))
        for f in (a.terms, a.edges):
            if not f.is_file():
                raise UserError(f"{f}: missing; run the parse_hpo stage first (dvc repro parse_hpo)")
        corpus, texts, onto = mining_inputs(pd.read_parquet(a.terms), pd.read_parquet(a.edges), concepts, pairs,
                                            m.corpus_format)
        model = None
        if "model" in m.sources or m.sampling == "top" or m.relative_margin is not None \
                or m.absolute_margin is not None:
            if not a.model.is_dir():
                raise UserError(f"{a.model}: no base model; run the base_model stage first (dvc repro base_model)")
            from sentence_transformers import SentenceTransformer
            model = SentenceTransformer(str(a.model))
            model.max_seq_length = p.max_seq_length
        df, report = mine(rows[["anchor", "positive", "hpo_id"]], corpus, texts, onto, m.mining(), model=model,
                          progress=True, cache=a.cache, model_key=model_key(a.model, p.max_seq_length) if a.cache else None)
        publish(a.out, df)
        report |= {"rows_available": available, "params": m.mining().model_dump(),
                   "examples": df.head(20)[["anchor", "positive", "negative_1", "negative_1_source"]]
                   .to_dict("records")}
    report["wall_s"] = round(time.time() - t0, 1)
    write_json(a.report, report)
    write_json(a.metrics, headline(report))
    log.info("mine: %s", headline(report))
    return report


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    a = parse_args(argv)
    from stages.params import load_params
    run(load_params(a.params), a)


if __name__ == "__main__":
    run_stage(main)
