"""Stage benchmark: does the fine-tuned model retrieve the right HPO term better than
the base model, in every language, and by how much?

Inputs: data/hpo/{terms,edges}.parquet, data/pairs/{queries,concepts}.parquet,
models/finetuned/, models/onnx/ (onnx/model_int8.onnx), optional phentrieve-format
JSON files (``benchmark.external_sets``).

Retrieval (``benchmark.retrieval``, both by default, in one run):
- ``single``: one vector per concept, the English document of ``benchmark.corpus_format``;
- ``multi``: one vector per English label and per synonym of ``benchmark.multi_scopes``
  (EXACT), a concept's score being the maximum over its vectors (phentrieve's
  ``label_synonyms_max``). A query equal (NFC, casefold) to one of the indexed texts of
  its own expected concept would find itself: it is not scored in this mode (counted
  ``n_indexed_queries``; these are the English synonym queries of the held-out set).

Every model encodes all indexed texts once (cached in data/benchmark/cache/, keyed by the
model's files and the texts, written atomically chunk by chunk so a killed run resumes)
and every query set is searched exactly (one batched matrix product against every
vector). Ranks, MRR, HR@k, NDCG@10 and MaxOntSim come from hpo_embed.retrieval.metrics.

Outputs:
- ``metrics/benchmark.json``: headline figures only (``benchmark.headline_retrieval``):
  per set (``heldout`` = every held-out language pooled, and each external file) and
  model ``mrr, hr@1, hr@10, maxontsim@5`` (int8: ``mrr``; quantize.json details it), the
  fine-tuned-vs-base and INT8-vs-fine-tuned ``mrr_diff`` with its 95% CI and ``p_value``, the
  calibrated thresholds (``calibration.<model>.threshold@0.9`` ...), and per external set
  ``n_cases_in_train`` (cases whose concept was trained on; 0 under the hold-out);
- ``reports/benchmark.md`` (models x sets tables with 95% CIs, both retrieval modes, the
  hold-out table, seen/unseen subsets) and ``reports/benchmark.json`` (every figure, flat
  keys ``<retrieval>.<set>[.<lang>][.seen|.unseen].<model>.<metric>``);
- data/benchmark/per_query.parquet (the dev queries of the calibration too, set ``dev``),
  data/benchmark/hr_at_k/*.csv (DVC plots);
- data/benchmark/calibration.json: what a top-1 cosine means (hpo_embed/benchmark/calibrate.py:
  score distributions of correct and wrong hits, calibration fitted on dev queries,
  thresholds for precision 0.9 and 0.95), also in reports/benchmark.md.

Hold-out: for each external set the report counts the cases by the split of their
concepts in data/pairs/concepts.parquet (``train`` if any expected concept is a training
concept, else dev, test, bench). Cases of training concepts (``pairs.holdout_sets: []``)
are scored separately too (``seen`` / ``unseen``). Two external files with the same
content (phentrieve's tiny_v1 and small_v1) are scored once, under the first name.

External sets (``[{"text": ..., "expected_hpo_ids": [...]}, ...]``): a malformed file
(not a list, a case that is not an object, a missing key, a wrong type, an id that is
not ``HP:NNNNNNN``) is a UserError naming the file and the case index. Well-formed ids
that the corpus lacks are not errors: an obsolete id whose ``replaced_by`` term is in
the corpus is replaced by it (counted: ``n_replaced_ids``); any other id not in the
corpus is dropped from the case's expected set (``n_dropped_ids``); a case left with no
expected id is skipped (``n_skipped_cases``). Each count is logged as a warning. An empty
file (``[]``) or one whose every case is skipped is a UserError. A set with one usable
case gets its metrics; its paired p-value is null (not computed, n < 2).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from hpo_embed.benchmark.calibrate import DEV_SET, calibrate, distributions, markdown
from hpo_embed.benchmark.calibrate import headline as calibration_headline
from hpo_embed.benchmark.inputs import (RETRIEVALS, SPLIT_ORDER, ModelSpec, Paths, case_splits, load_dev, load_heldout,
                                        model_specs)
from hpo_embed.benchmark.report import report_markdown
from hpo_embed.benchmark.score import branch_summary, headline, headline_sets, score_set, summarize, write_curves
from hpo_embed.common import UserError, atomic_write_text, log, write_json, write_parquet
from hpo_embed.embedding import cache_file, encode_cached, prune, text_hash
from hpo_embed.ontology.graph import load_graph
from hpo_embed.pairs.external_sets import QuerySet, external_files, load_external_set
from hpo_embed.params import BenchmarkParams
from hpo_embed.retrieval import metrics as rm
from hpo_embed.retrieval.corpus import load_terms
from hpo_embed.retrieval.index import Index, build_index, self_matches
from hpo_embed.schemas import read_table

PER_QUERY_COLUMNS = ["retrieval", "model", "set", "lang", "seen", "branch", "query", "expected", "retrieved",
                     "scores", "rank", *rm.METRICS]


@dataclass
class Concepts:
    """The selected concepts, their indexes (one per retrieval mode) and lookups."""
    all_terms: pd.DataFrame
    ids: list[str]
    id_index: dict[str, int]
    indexes: list[Index]
    branch_of: dict[str, str]
    replaced_by: dict[str, str]


def load_corpus(bp: BenchmarkParams, paths: Paths) -> Concepts:
    modes = [m for m in RETRIEVALS if m in bp.retrieval]   # non-empty, with the headline (hpo_embed/params.py)
    all_terms = load_terms(paths.terms, selected_only=False)
    terms = all_terms[all_terms["selected"]].reset_index(drop=True)
    ids = sorted(terms["id"])
    replaced_by = {r["id"]: r["replaced_by"] for r in all_terms[["id", "replaced_by"]].to_dict("records")
                   if r["replaced_by"]}
    indexes = [build_index(terms, mode, bp.corpus_format, bp.multi_scopes) for mode in modes]
    branch_of = dict(zip(terms["id"], terms["branch"])) if "branch" in terms.columns else {}
    return Concepts(all_terms, ids, {h: i for i, h in enumerate(ids)}, indexes, branch_of, replaced_by)


def load_sets(bp: BenchmarkParams, paths: Paths, corpus: Concepts) -> tuple[list[QuerySet], dict[str, str], dict[str, str]]:
    """The held-out sets and the external ones (a file with the same cases as an earlier one is
    scored once); ``split_of`` (concept -> pairs split) and the duplicates."""
    id_set = set(corpus.ids)
    sets = load_heldout(paths.queries, id_set, bp.languages)
    split_of: dict[str, str] = {}
    if paths.concepts.is_file():
        concepts = read_table(paths.concepts, "concepts")
        split_of = dict(zip(concepts["hpo_id"], concepts["split"]))
        log.info("corpus: %d concepts (%s); %d test, %d bench (held-out benchmark) concepts",
                 len(corpus.ids), ", ".join(f"{ix.mode}: {len(ix.texts)} vectors" for ix in corpus.indexes),
                 int((concepts["split"] == "test").sum()), int((concepts["split"] == "bench").sum()))
    stems: dict[str, str] = {}
    contents: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    for f, p in external_files(bp.external_sets):
        qs = load_external_set(p, id_set, corpus.replaced_by)
        if qs.set in stems:
            raise UserError(f"params.yaml: benchmark.external_sets: {f} and {stems[qs.set]} both map to {qs.set}")
        stems[qs.set] = f
        digest = text_hash(qs.texts, qs.expected)
        if digest in contents:
            log.warning("%s: the same cases as %s; scored once, as %s", f, stems[contents[digest]],
                        contents[digest])
            duplicates[qs.set] = contents[digest]
            continue
        contents[digest] = qs.set
        for split in (*SPLIT_ORDER, "unknown"):
            qs.counts[f"cases_by_split.{split}"] = 0
        for split in case_splits(qs, split_of):
            qs.counts[f"cases_by_split.{split}"] += 1
        if qs.counts["cases_by_split.train"]:
            log.warning("%s: %d of %d cases expect a training concept (pairs.holdout_sets does not hold this "
                        "set out): scored as seen / unseen subsets too", f, qs.counts["cases_by_split.train"],
                        len(qs.texts))
        sets.append(qs)
    return sets, split_of, duplicates


def encode_model(spec: ModelSpec, doc_texts: list[str], query_texts: list[str], paths: Paths,
                 batch_size: int) -> tuple[torch.Tensor, torch.Tensor, set[str], dict[str, float]]:
    """Concepts and query embeddings of one model through the cache (keyed by the model's
    content, not its name: base and an identical extra model share it)."""
    t0, c0 = time.perf_counter(), time.process_time()
    key = spec.cache_key()
    c_file = cache_file(paths.cache, key, doc_texts, "corpus")
    q_file = cache_file(paths.cache, key, query_texts, "queries")
    loaded: list = []

    def get_model():
        if not loaded:
            log.info("loading %s (%s)", spec.name, spec.path)
            loaded.append(spec.load())
        return loaded[0]

    c_emb = encode_cached(get_model, doc_texts, c_file, batch_size, f"{spec.name}: corpus")
    q_emb = encode_cached(get_model, query_texts, q_file, batch_size, f"{spec.name}: queries")
    timing = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    log.info("%s: %d indexed texts + %d queries encoded in %.1fs (%.1f CPU s)", spec.name, len(doc_texts),
             len(query_texts), timing["wall_s"], timing["cpu_s"])
    return torch.from_numpy(c_emb), torch.from_numpy(q_emb), {c_file.name, q_file.name}, timing


def score_model(name: str, c_all: torch.Tensor, q_all: torch.Tensor, corpus: Concepts, sets: list[QuerySet],
                doc_pos: dict[str, int], q_index: dict[str, int], keeps: dict, seen_of: dict,
                ontsim: rm.OntologySimilarity) -> list[dict]:
    """Per-query rows of one model, every retrieval mode and set. The pooled held-out set
    (``lang == "all"``) reuses the per-language rows, relabelled (no second search)."""
    rows: list[dict] = []
    for ix in corpus.indexes:
        c_t = c_all[torch.as_tensor([doc_pos[t] for t in ix.texts], dtype=torch.long)]
        vec = ix.vec_concept if ix.mode == "multi" else None
        held_rows: list[dict] = []
        for qs in sets:
            if qs.set == "heldout" and qs.lang == "all":
                rows.extend({**r, "lang": "all"} for r in held_rows)
                continue
            idx = torch.as_tensor([q_index[t] for t in qs.texts], dtype=torch.long)
            keep, seen = keeps[(ix.mode, qs.key)], seen_of[qs.key]
            for i, r in zip(keep, score_set(c_t, q_all[idx], qs, corpus.id_index, corpus.ids, ontsim, vec, keep)):
                row = {"retrieval": ix.mode, "model": name, "set": qs.set, "lang": qs.lang,
                       "seen": seen[i] if seen is not None else None,
                       "branch": corpus.branch_of.get(qs.expected[i][0]) or None, **r}
                rows.append(row)
                if qs.set == "heldout":
                    held_rows.append(row)
    return rows


def score_all(specs: list[ModelSpec], corpus: Concepts, sets: list[QuerySet], split_of: dict[str, str],
              bp: BenchmarkParams, paths: Paths) -> tuple[pd.DataFrame, dict, set[str]]:
    """Every model encodes the indexed texts and queries once; every set is searched exactly."""
    ontsim = rm.OntologySimilarity(load_graph(paths.edges))
    doc_texts = sorted({t for ix in corpus.indexes for t in ix.texts})
    doc_pos = {t: i for i, t in enumerate(doc_texts)}
    query_texts = sorted({t for s in sets for t in s.texts})
    q_index = {t: i for i, t in enumerate(query_texts)}
    keeps = {(ix.mode, qs.key): [i for i, hit in enumerate(self_matches(ix, qs.texts, qs.expected)) if not hit]
             for ix in corpus.indexes for qs in sets}
    for ix in corpus.indexes:
        if ix.mode == "multi":
            for qs in sets:
                qs.counts["n_indexed_queries"] = len(qs.texts) - len(keeps[(ix.mode, qs.key)])
    seen_of = {qs.key: [s == "train" for s in case_splits(qs, split_of)] if qs.set not in ("heldout", DEV_SET)
               else None for qs in sets}
    used_cache: set[str] = set()
    rows: list[dict] = []
    timings: dict[str, dict[str, float]] = {}
    for spec in tqdm(specs, desc="models", unit="model"):
        c_all, q_all, files, timings[spec.name] = encode_model(spec, doc_texts, query_texts, paths, bp.batch_size)
        used_cache |= files
        rows += score_model(spec.name, c_all, q_all, corpus, sets, doc_pos, q_index, keeps, seen_of, ontsim)
    return pd.DataFrame(rows, columns=PER_QUERY_COLUMNS), timings, used_cache


def run(bp: BenchmarkParams, base_model: str, paths: Paths) -> dict[str, Any]:
    corpus = load_corpus(bp, paths)
    modes = [ix.mode for ix in corpus.indexes]
    sets, split_of, duplicates = load_sets(bp, paths, corpus)
    dev = load_dev(paths.queries, set(corpus.ids), bp.calibration_queries, bp.seed) if paths.calibration else None
    specs = model_specs(bp, base_model, paths)
    per_query, timings, used_cache = score_all(specs, corpus, sets + ([dev] if dev else []), split_of, bp, paths)

    names = [s.name for s in specs]
    report = summarize(per_query, sets, names, len(corpus.ids), bp, modes)
    report.update(branch_summary(per_query, sets, names, modes))
    for ix in corpus.indexes:
        report[f"{ix.mode}.n_vectors"] = len(ix.texts)
    shown = headline_sets(sets)
    dist = distributions(per_query, shown, names, bp.headline_retrieval)
    report.update(dist)
    metrics = headline(report, sets, names, bp.headline_retrieval)
    cal = calibrate(per_query, shown, names, bp.headline_retrieval) if dev else None
    if cal is not None:
        metrics.update(calibration_headline(cal))
        write_json(paths.calibration, cal)

    write_parquet(paths.per_query, pa.Table.from_pandas(per_query, preserve_index=False))
    write_curves(per_query, sets, names, paths.curves, bp.headline_retrieval)
    write_json(paths.metrics, metrics)
    write_json(paths.reports / "benchmark.json", report)
    labels = dict(zip(corpus.all_terms["id"], corpus.all_terms["label"]))
    scores_md = markdown(dist, cal or {"models": {}}, shown, names, bp.headline_retrieval)
    atomic_write_text(paths.reports / "benchmark.md",
                      report_markdown(report, sets, specs, modes, bp, base_model, duplicates, labels) + "\n".join(scores_md)
                      + "\n")
    prune(paths.cache, used_cache)
    log_headline(metrics, sets, names, bp.headline_retrieval)
    return {"metrics": metrics, "report": report, "timings": timings, "per_query": per_query}


def log_headline(metrics: dict, sets: list[QuerySet], names: list[str], mode: str) -> None:
    if "finetuned" not in names or "base" not in names:
        return
    for name, _ in headline_sets(sets):
        p = metrics.get(f"{name}.finetuned_vs_base.p_value")
        log.info("%-32s MRR (%s) base %.3f  finetuned %.3f  (%s)", name, mode,
                 metrics.get(f"{name}.base.mrr") or math.nan, metrics.get(f"{name}.finetuned.mrr") or math.nan,
                 f"p={p:.4g}" if p is not None else "p: not computed (n < 2)")
