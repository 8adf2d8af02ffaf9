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
  fine-tuned-vs-base ``mrr_diff`` and ``p_value``, and per external set
  ``n_cases_in_train`` (cases whose concept was trained on; 0 under the hold-out);
- ``reports/benchmark.md`` (models x sets tables with 95% CIs, both retrieval modes, the
  hold-out table, seen/unseen subsets) and ``reports/benchmark.json`` (every figure, flat
  keys ``<retrieval>.<set>[.<lang>][.seen|.unseen].<model>.<metric>``);
- data/benchmark/per_query.parquet, data/benchmark/hr_at_k/*.csv (DVC plots).

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

import hashlib
import io
import json
import math
import shutil
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from hpo_embed.retrieval import metrics as rm
from hpo_embed.common import (UserError, atomic_write_bytes, atomic_write_text, log, publish_dir, temp_sibling,
                              write_json, write_parquet)
from hpo_embed.retrieval.corpus import build_corpus, load_terms
from hpo_embed.schemas import read_table
from hpo_embed.pairs.external_sets import QuerySet, _sanitize, external_files, load_external_set  # noqa: F401 (re-exported)
from hpo_embed.models.loader import load_sentence_transformer, resolve_model
from hpo_embed.params import BenchmarkParams

RETRIEVALS = ("single", "multi")
HEADLINE_METRICS = ("mrr", "hr@1", "hr@10", "maxontsim@5")
HEADLINE_MRR_ONLY = ("int8",)       # int8 vs fp32 is detailed by the quantize stage
SPLIT_ORDER = ("train", "dev", "test", "bench")
PIPELINE_MODELS = ("base", "finetuned", "int8")
INT8_FILE = "onnx/model.onnx"   # the quantize stage's published folder: its only ONNX file is the INT8 model
TOP_N = 10          # retrieved ids kept per query (per_query.parquet)
CURVE_KS = tuple(range(1, 11))
QUERY_BATCH = 256   # queries scored against the whole corpus at once
ENCODE_CHUNK = 2048  # texts encoded between two cache checkpoints
COMPARISONS = (("finetuned", "base"), ("int8", "finetuned"))


@dataclass
class Paths:
    """The benchmark stage's inputs and outputs (its dvc.yaml deps and outs)."""
    terms: Path
    edges: Path
    queries: Path
    concepts: Path
    finetuned: Path
    onnx: Path
    per_query: Path     # per-query ranks and scores (Parquet)
    curves: Path        # HR@K files, one per query set
    cache: Path         # corpus embeddings (not a DVC output)
    metrics: Path       # headline figures
    reports: Path       # folder for benchmark.md and benchmark.json
    base: Path | None = None   # the base_model stage's folder; None = train.base_model as given


@dataclass
class ModelSpec:
    name: str
    path: str                  # folder or hub id
    kwargs: dict[str, Any] = field(default_factory=dict)   # SentenceTransformer(...) kwargs
    max_seq_length: int | None = None                        # override of the model's own
    source: str | None = None                                # as written in params (labels)


# --------------------------------------------------------------------------- inputs

def load_heldout(queries_path: Path, corpus_ids: set[str], languages: list[str]) -> list[QuerySet]:
    """Test-split queries, one QuerySet per language (+ ``all`` pooled when several)."""
    df = read_table(queries_path, "queries")
    df = df[df["split"] == "test"].reset_index(drop=True)
    bad = ~df["hpo_id"].isin(corpus_ids)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{queries_path}: test row {i}: {df['hpo_id'][i]} is not in the corpus "
                        f"({int(bad.sum())} such rows); data/hpo and data/pairs are out of sync")
    present = sorted(df["lang"].unique())
    if languages:
        absent = [lang for lang in languages if lang not in present]
        if absent:
            raise UserError(f"params.yaml: benchmark.languages: no test queries for {', '.join(absent)} in "
                            f"{queries_path} (present: {', '.join(present) or 'none'})")
        present = [lang for lang in present if lang in languages]
    df = df[df["lang"].isin(present)]
    sets = []
    for lang in present:
        sub = df[df["lang"] == lang]
        sets.append(QuerySet("heldout", lang, sub["text"].tolist(), [[h] for h in sub["hpo_id"]],
                             {"n_queries": len(sub), "n_concepts": int(sub["hpo_id"].nunique())}))
    if len(present) > 1:   # the languages' queries one after the other (scored once, see run)
        sets.append(QuerySet("heldout", "all", [t for s in sets for t in s.texts], [e for s in sets for e in s.expected],
                             {"n_queries": len(df), "n_concepts": int(df["hpo_id"].nunique())}))
    return sets


def model_specs(bp: BenchmarkParams, base_model: str, paths: Paths) -> list[ModelSpec]:
    specs: list[ModelSpec] = []
    for name in bp.models:
        if name == "base":
            if paths.base is None:
                specs.append(ModelSpec("base", resolve_model(base_model, "train.base_model")))
            elif (paths.base / "modules.json").is_file():
                specs.append(ModelSpec("base", str(paths.base)))
            else:
                raise UserError(f"{paths.base}: no base model; run the base_model stage first (dvc repro base_model)")
        elif name == "finetuned":
            if not (paths.finetuned / "modules.json").is_file():
                raise UserError(f"{paths.finetuned}: no fine-tuned model; run the train stage first "
                                "(or drop 'finetuned' from benchmark.models)")
            specs.append(ModelSpec("finetuned", str(paths.finetuned)))
        elif name == "int8":
            if not (paths.onnx / INT8_FILE).is_file():
                raise UserError(f"{paths.onnx / INT8_FILE}: no int8 model; run the quantize stage first "
                                "(or drop 'int8' from benchmark.models)")
            # loaded exactly as the CPU server does: the plain ONNX backend, no file name
            specs.append(ModelSpec("int8", str(paths.onnx), {"backend": "onnx"}))
    for i, entry in enumerate(bp.extra_models):
        name, sep, spec = entry.partition("=")
        if not sep:
            name, spec = _sanitize(entry.rstrip("/").rsplit("/", 1)[-1].removeprefix("pkg:")), entry
        name = _sanitize(name)
        if not name or name in {s.name for s in specs} or name in PIPELINE_MODELS:
            raise UserError(f"params.yaml: benchmark.extra_models[{i}]: name {name!r} is empty or already used "
                            "(write it as name=spec)")
        specs.append(ModelSpec(name, resolve_model(spec.strip(), f"benchmark.extra_models[{i}]"),
                               source=spec.strip()))
    for s in specs:
        s.max_seq_length = bp.max_seq_length
    return specs


# --------------------------------------------------------------------------- encoding with a cache

def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def model_fingerprint(spec: ModelSpec) -> str:
    """Hash of the model's files (content) and load options; a hub id hashes its name."""
    h = hashlib.sha256(json.dumps([spec.kwargs, spec.max_seq_length], sort_keys=True).encode())
    folder = Path(spec.path)
    if not folder.is_dir():
        h.update(spec.path.encode())
        return h.hexdigest()
    wanted = spec.kwargs.get("model_kwargs", {}).get("file_name")
    if wanted is None and spec.kwargs.get("backend") == "onnx":
        wanted = "onnx/model.onnx"   # what sentence-transformers loads without a file name
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder).as_posix()
        if rel.endswith(".onnx") and rel != wanted or rel.startswith(".") or "/." in rel:
            continue   # other ONNX variants do not change this model's embeddings
        h.update(rel.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _load_npy(path: Path) -> np.ndarray | None:
    """A cached embedding array, or None (with a warning) when the file is truncated or
    corrupt: it is then encoded again."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        log.warning("%s: unreadable embedding cache (%s); encoding again", path, str(exc).splitlines()[0][:120])
        return None
    if arr.ndim != 2 or arr.dtype != np.float32:
        log.warning("%s: unexpected embedding cache %s %s; encoding again", path, arr.dtype, arr.shape)
        return None
    return arr


def encode_cached(get_model, texts: list[str], cache_file: Path, batch_size: int, *, document: bool,
                  desc: str) -> np.ndarray:
    """L2-normalised float32 embeddings of ``texts``, cached in ``cache_file``.

    Texts are encoded longest first in chunks; each chunk is saved atomically under
    ``<cache_file>.parts/`` so that a killed run resumes from the last finished chunk.
    ``get_model()`` returns the SentenceTransformer; it is called only when encoding is needed.
    """
    if cache_file.is_file():
        arr = _load_npy(cache_file)
        if arr is not None and arr.shape[0] == len(texts):
            return arr
    parts = cache_file.with_name(cache_file.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    chunks = []
    with tqdm(total=len(texts), desc=desc, unit="text", leave=False) as bar:
        for c, start in enumerate(range(0, len(order), ENCODE_CHUNK)):
            idx = order[start:start + ENCODE_CHUNK]
            part = parts / f"{c:05d}.npy"
            emb = None
            if part.is_file():
                emb = _load_npy(part)
                if emb is not None and emb.shape[0] != len(idx):
                    emb = None
            if emb is None:
                model = get_model()
                # a plain encode(), queries and documents alike, as phentrieve calls the model
                # (a model's saved default prompt applies; its query/document prompts do not)
                emb = model.encode([texts[i] for i in idx], batch_size=batch_size, show_progress_bar=False,
                             convert_to_numpy=True, normalize_embeddings=True).astype(np.float32)
                _save_npy(part, emb)
            chunks.append(emb)
            bar.update(len(idx))
    dim = chunks[0].shape[1] if chunks else 0
    out = np.empty((len(texts), dim), dtype=np.float32)
    if chunks:
        out[np.asarray(order)] = np.concatenate(chunks)
    _save_npy(cache_file, out)
    shutil.rmtree(parts, ignore_errors=True)
    return out


def load_model(spec: ModelSpec):
    return load_sentence_transformer(spec.path, f"model {spec.name} ({spec.path})", spec.max_seq_length, **spec.kwargs)


# --------------------------------------------------------------------------- indexes

def case_key(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split()).casefold()


@dataclass
class Index:
    """What a retrieval mode searches: ``texts[j]`` is a vector of concept ``vec_concept[j]``."""
    mode: str
    texts: list[str]
    vec_concept: torch.Tensor
    own: list[set[str]] = field(default_factory=list)   # multi: each concept's indexed texts (case_key)


def build_index(terms: pd.DataFrame, corpus_ids: list[str], mode: str, bp: BenchmarkParams) -> Index:
    if mode == "single":
        corpus = build_corpus(terms, bp.corpus_format)
        return Index(mode, [corpus[i] for i in corpus_ids], torch.arange(len(corpus_ids)))
    rows = {r["id"]: r for r in terms[["id", "label", "synonyms"]].to_dict("records")}
    scopes = set(bp.multi_scopes)
    texts, owner, own = [], [], []
    for ci, hid in enumerate(corpus_ids):
        r = rows[hid]
        syns = r["synonyms"] if r["synonyms"] is not None else []
        names = [r["label"]] + [x["text"] for x in syns if x["scope"] in scopes]
        keys: set[str] = set()
        for n in names:
            k = case_key(n)
            if k and k not in keys:
                keys.add(k)
                texts.append(n)
                owner.append(ci)
        own.append(keys)
    return Index(mode, texts, torch.as_tensor(owner, dtype=torch.long), own)


def indexed_queries(qs: QuerySet, index: Index, id_index: dict[str, int]) -> list[bool]:
    """Multi-vector mode: which queries are an indexed text of their own expected concept."""
    if index.mode != "multi":
        return [False] * len(qs.texts)
    return [any(case_key(t) in index.own[id_index[h]] for h in e) for t, e in zip(qs.texts, qs.expected)]


# --------------------------------------------------------------------------- scoring

def score_set(corpus_emb: torch.Tensor, query_emb: torch.Tensor, qs: QuerySet, id_index: dict[str, int],
              corpus_ids: list[str], ontsim: rm.OntologySimilarity, vec_concept: torch.Tensor | None = None,
              keep: list[int] | None = None) -> list[dict]:
    """Per-query rows: rank, positions, top-10 ids/scores and metric values. ``corpus_emb``
    holds one vector per concept, or several (``vec_concept``: each vector's concept
    index; a concept's score is the max over its vectors). ``keep``: the query indices
    scored (default: all)."""
    keep = list(range(len(qs.texts))) if keep is None else keep
    rows = []
    for start in range(0, len(keep), QUERY_BATCH):
        sel = keep[start:start + QUERY_BATCH]
        q = query_emb[torch.as_tensor(sel, dtype=torch.long)]
        exp_ids = [qs.expected[i] for i in sel]
        scores = q @ corpus_emb.T
        if vec_concept is not None:
            scores = rm.concept_max(scores, vec_concept, len(corpus_ids))
        positions = rm.expected_positions(scores, [[id_index[h] for h in e] for e in exp_ids])
        top_idx, top_scores = rm.top_k(scores, TOP_N)
        for j, (pos, e) in enumerate(zip(positions, exp_ids)):
            retrieved = [corpus_ids[i] for i in top_idx[j].tolist()]
            row = {"query": qs.texts[sel[j]], "expected": list(e), "retrieved": retrieved,
                   "scores": [round(float(s), 6) for s in top_scores[j].tolist()], "rank": int(pos[0])}
            row.update(rm.per_query_metrics(pos, e, retrieved, ontsim))
            rows.append(row)
    return rows


def hit_rate_curve(ranks: np.ndarray, ks=CURVE_KS) -> list[float]:
    return [float((ranks <= k).mean()) if ranks.size else math.nan for k in ks]


def _finite(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _subset(per_query: pd.DataFrame, mode: str, qs: QuerySet) -> pd.DataFrame:
    return per_query[(per_query["retrieval"] == mode) & (per_query["set"] == qs.set)
                     & (per_query["lang"].fillna("") == (qs.lang or ""))]


def comparisons(models: list[str]) -> list[tuple[str, str]]:
    pairs = [p for p in COMPARISONS if p[0] in models and p[1] in models]
    return pairs + [(m, "finetuned") for m in models if m not in PIPELINE_MODELS and "finetuned" in models]


def summarize(per_query: pd.DataFrame, sets: list[QuerySet], models: list[str], corpus_size: int,
              bp: BenchmarkParams, modes: list[str] | None = None) -> dict[str, Any]:
    """Every figure, flat keys (reports/benchmark.json): counts ``<set>.<count>``, metrics
    ``<retrieval>.<set>.<model>.<metric>[_ci_low|_ci_high]``, comparisons
    ``<retrieval>.<set>.<a>_vs_<b>.*`` and, for external sets with cases of training
    concepts, ``<retrieval>.<set>.{seen,unseen}.<model>.<metric>``."""
    modes = modes or sorted(set(per_query["retrieval"]), key=RETRIEVALS.index)
    out: dict[str, Any] = {"corpus.n_documents": corpus_size}
    for qs in sets:
        for k, v in qs.counts.items():
            out[f"{qs.key}.{k}"] = v
    for mode in modes:
        for qs in tqdm(sets, desc=f"bootstrap CIs ({mode})", unit="set", leave=False):
            sub = _subset(per_query, mode, qs)
            by_model = {m: sub[sub["model"] == m] for m in models}
            subsets = [("", by_model)]
            seen = sub["seen"].dropna() if "seen" in sub else pd.Series(dtype=bool)
            if qs.lang is None and seen.any():
                for label, flag in (("seen", True), ("unseen", False)):
                    subsets.append((f".{label}", {m: df[df["seen"] == flag] for m, df in by_model.items()}))
            for suffix, frames in subsets:
                for m, df in frames.items():
                    if df.empty:
                        continue
                    values = {name: df[name].to_numpy() for name in rm.METRICS}
                    out[f"{mode}.{qs.key}{suffix}.{m}.n_queries"] = len(df)
                    for name, v in rm.summarize(values, bp.bootstrap_resamples, bp.seed).items():
                        out[f"{mode}.{qs.key}{suffix}.{m}.{name}"] = v
            for a, b in comparisons(models):
                da, db = by_model[a], by_model[b]
                if da.empty:
                    continue
                res = rm.paired_diff(da["mrr"].to_numpy(), db["mrr"].to_numpy(), bp.bootstrap_resamples, bp.seed)
                prefix = f"{mode}.{qs.key}.{a}_vs_{b}"
                out[f"{prefix}.mrr_diff"] = res["diff"]
                out[f"{prefix}.mrr_diff_ci_low"] = res["diff_ci_low"]
                out[f"{prefix}.mrr_diff_ci_high"] = res["diff_ci_high"]
                out[f"{prefix}.p_value"] = res["p_value"]
    return {k: _finite(v) for k, v in out.items()}


def branch_summary(per_query: pd.DataFrame, sets: list[QuerySet], models: list[str],
                   modes: list[str]) -> dict[str, Any]:
    """MRR per top-level HPO branch of the expected concept on the pooled held-out set
    (``<retrieval>.heldout.branch.<branch id>.<model>.{mrr,n_queries}``; no CIs)."""
    out: dict[str, Any] = {}
    for _, qs in headline_sets([s for s in sets if s.set == "heldout"]):
        for mode in modes:
            sub = _subset(per_query, mode, qs).dropna(subset=["branch"])
            for (branch, m), df in sub.groupby(["branch", "model"]):
                out[f"{mode}.heldout.branch.{branch}.{m}.mrr"] = float(df["mrr"].mean())
                out[f"{mode}.heldout.branch.{branch}.{m}.n_queries"] = len(df)
    return out


def headline_sets(sets: list[QuerySet]) -> list[tuple[str, QuerySet]]:
    """(headline name, set): the held-out languages pooled (``heldout``; the one language
    when there is one) and each external set."""
    held = [s for s in sets if s.set == "heldout"]
    pooled = [s for s in held if s.lang == "all"] or held[:1]
    return [("heldout", s) for s in pooled] + [(s.key, s) for s in sets if s.set != "heldout"]


def headline(report: dict[str, Any], sets: list[QuerySet], models: list[str], mode: str) -> dict[str, Any]:
    """The few figures tracked as DVC metrics (module docstring); all come from ``report``."""
    out: dict[str, Any] = {}
    for name, qs in headline_sets(sets):
        for m in models:
            for metric in (("mrr",) if m in HEADLINE_MRR_ONLY else HEADLINE_METRICS):
                key = f"{mode}.{qs.key}.{m}.{metric}"
                if key in report:
                    out[f"{name}.{m}.{metric}"] = report[key]
        for k in ("mrr_diff", "p_value"):
            key = f"{mode}.{qs.key}.finetuned_vs_base.{k}"
            if key in report:
                out[f"{name}.finetuned_vs_base.{k}"] = report[key]
        if qs.set != "heldout" and f"{qs.key}.cases_by_split.train" in report:
            out[f"{name}.n_cases_in_train"] = report[f"{qs.key}.cases_by_split.train"]
    return out


def case_splits(qs: QuerySet, split_of: dict[str, str]) -> list[str]:
    """Per case: ``train`` if any expected concept is a training concept, else the first of
    dev, test, bench that holds one (``unknown`` without concepts.parquet)."""
    out = []
    for e in qs.expected:
        splits = {split_of.get(h, "unknown") for h in e}
        out.append(next((s for s in SPLIT_ORDER if s in splits), "unknown"))
    return out


# --------------------------------------------------------------------------- the stage

def run(bp: BenchmarkParams, base_model: str, paths: Paths) -> dict[str, Any]:
    modes = [m for m in RETRIEVALS if m in bp.retrieval]   # non-empty, with the headline (hpo_embed/params.py)
    all_terms = load_terms(paths.terms, selected_only=False)
    terms = all_terms[all_terms["selected"]].reset_index(drop=True)
    corpus_ids = sorted(terms["id"])
    id_index = {h: i for i, h in enumerate(corpus_ids)}
    id_set = set(corpus_ids)
    replaced_by = {r["id"]: r["replaced_by"] for r in all_terms[["id", "replaced_by"]].to_dict("records")
                   if r["replaced_by"]}
    edges = read_table(paths.edges, "edges")
    ontsim = rm.OntologySimilarity(zip(edges["child"], edges["parent"]))
    indexes = [build_index(terms, corpus_ids, mode, bp) for mode in modes]

    sets = load_heldout(paths.queries, id_set, bp.languages)
    split_of: dict[str, str] = {}
    branch_of = dict(zip(terms["id"], terms["branch"])) if "branch" in terms.columns else {}
    if paths.concepts.is_file():
        concepts = read_table(paths.concepts, "concepts")
        split_of = dict(zip(concepts["hpo_id"], concepts["split"]))
        log.info("corpus: %d concepts (%s); %d test, %d bench (held-out benchmark) concepts",
                 len(corpus_ids), ", ".join(f"{ix.mode}: {len(ix.texts)} vectors" for ix in indexes),
                 int((concepts["split"] == "test").sum()), int((concepts["split"] == "bench").sum()))
    stems: dict[str, str] = {}
    contents: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    for f, p in external_files(bp.external_sets):
        qs = load_external_set(p, id_set, replaced_by)
        if qs.set in stems:
            raise UserError(f"params.yaml: benchmark.external_sets: {f} and {stems[qs.set]} both map to {qs.set}")
        stems[qs.set] = f
        digest = _sha(qs.texts, qs.expected)
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
    specs = model_specs(bp, base_model, paths)

    doc_texts = sorted({t for ix in indexes for t in ix.texts})
    doc_pos = {t: i for i, t in enumerate(doc_texts)}
    ix_rows = {ix.mode: torch.as_tensor([doc_pos[t] for t in ix.texts], dtype=torch.long) for ix in indexes}
    corpus_hash = _sha(doc_texts)
    query_texts = sorted({t for s in sets for t in s.texts})
    query_hash = _sha(query_texts)
    q_index = {t: i for i, t in enumerate(query_texts)}
    keeps = {(ix.mode, qs.key): [i for i, hit in enumerate(indexed_queries(qs, ix, id_index)) if not hit]
             for ix in indexes for qs in sets}
    for ix in indexes:
        if ix.mode == "multi":
            for qs in sets:
                qs.counts["n_indexed_queries"] = len(qs.texts) - len(keeps[(ix.mode, qs.key)])
    seen_of = {qs.key: [s == "train" for s in case_splits(qs, split_of)] if qs.set != "heldout" else None
               for qs in sets}
    used_cache: set[str] = set()
    rows: list[dict] = []
    timings: dict[str, dict[str, float]] = {}
    for spec in tqdm(specs, desc="models", unit="model"):
        t0, c0 = time.perf_counter(), time.process_time()
        fp = model_fingerprint(spec)[:16]
        # keyed by the model's content, not its name: base and an identical extra model share it
        c_file = paths.cache / f"{fp}-corpus-{corpus_hash[:16]}.npy"
        q_file = paths.cache / f"{fp}-queries-{query_hash[:16]}.npy"
        used_cache |= {c_file.name, q_file.name}
        loaded: list = []

        def get_model(spec=spec, loaded=loaded):
            if not loaded:
                log.info("loading %s (%s)", spec.name, spec.path)
                loaded.append(load_model(spec))
            return loaded[0]

        c_emb = encode_cached(get_model, doc_texts, c_file, bp.batch_size, document=True,
                              desc=f"{spec.name}: corpus")
        q_emb = encode_cached(get_model, query_texts, q_file, bp.batch_size, document=False,
                              desc=f"{spec.name}: queries")
        timings[spec.name] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        log.info("%s: %d indexed texts + %d queries encoded in %.1fs (%.1f CPU s)", spec.name, len(doc_texts),
                 len(query_texts), timings[spec.name]["wall_s"], timings[spec.name]["cpu_s"])
        loaded.clear()
        c_all, q_t = torch.from_numpy(c_emb), torch.from_numpy(q_emb)
        for ix in indexes:
            c_t = c_all[ix_rows[ix.mode]]
            vec = ix.vec_concept if ix.mode == "multi" else None
            held_rows: list[dict] = []
            for qs in sets:
                if qs.set == "heldout" and qs.lang == "all":
                    # the per-language sets in order: their rows, relabelled (no second search)
                    rows.extend({**r, "lang": "all"} for r in held_rows)
                    continue
                idx = torch.as_tensor([q_index[t] for t in qs.texts], dtype=torch.long)
                keep = keeps[(ix.mode, qs.key)]
                seen = seen_of[qs.key]
                for i, r in zip(keep, score_set(c_t, q_t[idx], qs, id_index, corpus_ids, ontsim, vec, keep)):
                    row = {"retrieval": ix.mode, "model": spec.name, "set": qs.set, "lang": qs.lang,
                           "seen": seen[i] if seen is not None else None,
                           "branch": branch_of.get(qs.expected[i][0]) or None, **r}
                    rows.append(row)
                    if qs.set == "heldout":
                        held_rows.append(row)

    per_query = pd.DataFrame(rows, columns=["retrieval", "model", "set", "lang", "seen", "branch", "query",
                                            "expected", "retrieved", "scores", "rank", *rm.METRICS])
    names = [s.name for s in specs]
    report = summarize(per_query, sets, names, len(corpus_ids), bp, modes)
    report.update(branch_summary(per_query, sets, names, modes))
    for ix in indexes:
        report[f"{ix.mode}.n_vectors"] = len(ix.texts)
    metrics = headline(report, sets, names, bp.headline_retrieval)

    write_parquet(paths.per_query, pa.Table.from_pandas(per_query, preserve_index=False))
    write_curves(per_query, sets, names, paths.curves, bp.headline_retrieval)
    write_json(paths.metrics, metrics)
    write_json(paths.reports / "benchmark.json", report)
    labels = dict(zip(all_terms["id"], all_terms["label"]))
    atomic_write_text(paths.reports / "benchmark.md",
                      report_markdown(report, sets, specs, modes, bp, base_model, duplicates, labels))
    for f in paths.cache.glob("*.npy") if paths.cache.is_dir() else []:
        if f.name not in used_cache:   # embeddings of older models / corpora
            f.unlink(missing_ok=True)
    for name, qs in headline_sets(sets):
        if "finetuned" in names and "base" in names:
            p = metrics.get(f"{name}.finetuned_vs_base.p_value")
            log.info("%-32s MRR (%s) base %.3f  finetuned %.3f  (%s)", name, bp.headline_retrieval,
                     metrics.get(f"{name}.base.mrr") or math.nan,
                     metrics.get(f"{name}.finetuned.mrr") or math.nan,
                     f"p={p:.4g}" if p is not None else "p: not computed (n < 2)")
    return {"metrics": metrics, "report": report, "timings": timings, "per_query": per_query}


def write_curves(per_query: pd.DataFrame, sets: list[QuerySet], models: list[str], folder: Path,
                 mode: str) -> None:
    """One CSV per query set (``k,model,hit_rate``; retrieval ``mode``), drawn by dvc plots
    as HR@K per model. Written into a temporary sibling and published whole."""
    final, folder = folder, temp_sibling(folder)
    folder.mkdir(parents=True)
    for qs in sets:
        sub = _subset(per_query, mode, qs)
        lines = ["k,model,hit_rate"]
        for m in models:
            ranks = sub.loc[sub["model"] == m, "rank"].to_numpy()
            if ranks.size:
                lines += [f"{k},{m},{hr:.6f}" for k, hr in zip(CURVE_KS, hit_rate_curve(ranks))]
        atomic_write_text(folder / f"{qs.key}.csv", "\n".join(lines) + "\n")
    publish_dir(folder, final)


# --------------------------------------------------------------------------- the report

MODE_TITLES = {"single": "single-vector (one document per concept, `benchmark.corpus_format`)",
               "multi": "multi-vector (label + synonyms, max per concept: phentrieve's `label_synonyms_max`)"}


def _fmt(report: dict, key: str) -> str:
    v = report.get(key)
    if v is None:
        return "–"
    lo, hi = report.get(f"{key}_ci_low"), report.get(f"{key}_ci_high")
    return f"{v:.3f} ({lo:.3f}–{hi:.3f})" if lo is not None and hi is not None else f"{v:.3f}"


def _p(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}"


def model_label(spec: ModelSpec, base_model: str) -> str:
    if spec.name == "base":
        return f"base: untuned `{base_model}`"
    if spec.name == "finetuned":
        return "finetuned: `models/finetuned`"
    if spec.name == "int8":
        return "int8: `models/onnx` (INT8 of finetuned)"
    return f"{spec.name}: `{spec.source or spec.path}` (comparison)"


def report_markdown(report: dict, sets: list[QuerySet], specs: list[ModelSpec], modes: list[str],
                    bp: BenchmarkParams, base_model: str, duplicates: dict[str, str],
                    labels: dict[str, str] | None = None) -> str:
    """reports/benchmark.md: what a reviewer reads in a pull request."""
    names = [s.name for s in specs]
    hl = headline_sets(sets)
    ext = [qs for qs in sets if qs.set != "heldout"]
    out = ["# Benchmark report", "",
           "Written by the benchmark stage (`python -m stages.benchmark`); every figure is in "
           "`reports/benchmark.json`, the headline ones in `metrics/benchmark.json` "
           f"(retrieval `{bp.headline_retrieval}`). Cells: mean (95% bootstrap CI, "
           f"{bp.bootstrap_resamples} resamples). MRR = mean reciprocal full rank, ties pessimistic "
           "(hpo_embed/retrieval/metrics.py); MaxOntSim@5 = phentrieve's HYBRID ontology similarity, "
           "best over the expected ids and the top 5. `heldout` = test-split queries of every "
           "language pooled.", "",
           "Models: " + "; ".join(model_label(s, base_model) for s in specs) + ".", ""]
    header = "| model | " + " | ".join(n for n, _ in hl) + " |"
    rule = "|---|" + "---|" * len(hl)
    for mode in modes:
        out += [f"## {MODE_TITLES[mode]}", "", f"{report.get(f'{mode}.n_vectors', '?')} vectors.", ""]
        for metric in HEADLINE_METRICS + ("ndcg@10", "hr@3", "hr@5"):
            out += [f"**{metric}**", "", header, rule]
            for m in names:
                out.append(f"| {m} | " + " | ".join(_fmt(report, f"{mode}.{qs.key}.{m}.{metric}") for _, qs in hl) + " |")
            out.append("")
        if comparisons(names):
            out += ["**paired MRR difference** (diff (95% CI), permutation p)", "", header, rule]
        for a, b in comparisons(names):
            cells = []
            for _, qs in hl:
                k = f"{mode}.{qs.key}.{a}_vs_{b}"
                if report.get(f"{k}.mrr_diff") is None:
                    cells.append("–")
                else:
                    cells.append(f"{report[f'{k}.mrr_diff']:+.3f} ({report[f'{k}.mrr_diff_ci_low']:+.3f}–"
                                 f"{report[f'{k}.mrr_diff_ci_high']:+.3f}), p={_p(report.get(f'{k}.p_value'))}")
            out.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
        out.append("")
        langs = [qs for qs in sets if qs.set == "heldout" and qs.lang != "all"]
        if len(langs) > 1:
            out += ["**MRR per held-out language**", "",
                    "| model | " + " | ".join(qs.lang for qs in langs) + " |", "|---|" + "---|" * len(langs)]
            for m in names:
                out.append(f"| {m} | " + " | ".join(_fmt(report, f"{mode}.{qs.key}.{m}.mrr") for qs in langs) + " |")
            out.append("")
        branches = sorted({k.split(".")[3] for k in report if k.startswith(f"{mode}.heldout.branch.")})
        if branches:
            out += ["<details><summary>MRR per top-level HPO branch (held-out, pooled; no CIs)</summary>", "",
                    "| branch | queries | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
            for br in branches:
                k = f"{mode}.heldout.branch.{br}"
                label = (labels or {}).get(br, "")
                out.append(f"| {br} {label} | {report.get(f'{k}.{names[0]}.n_queries', 0)} | "
                           + " | ".join(f"{report[f'{k}.{m}.mrr']:.3f}" if f"{k}.{m}.mrr" in report else "–"
                                        for m in names) + " |")
            out += ["", "</details>", ""]
        split = [qs for qs in ext if report.get(f"{mode}.{qs.key}.seen.{names[0]}.mrr") is not None]
        if split:
            out += ["**MRR on cases whose concept was trained on (seen) vs not (unseen)**", "",
                    "| set | model | seen | unseen |", "|---|---|---|---|"]
            for qs in split:
                for m in names:
                    out.append(f"| {qs.key} | {m} | {_fmt(report, f'{mode}.{qs.key}.seen.{m}.mrr')} | "
                               f"{_fmt(report, f'{mode}.{qs.key}.unseen.{m}.mrr')} |")
            out.append("")
    if ext:
        out += ["## Hold-out: cases by the split of their concept", "",
                "`train`: a case expects a concept the model was trained on (its official labels are "
                "training pairs) -- 0 when `pairs.holdout_sets` holds the set out.", "",
                "| set | cases | " + " | ".join(SPLIT_ORDER) + " | indexed (multi, not scored) |",
                "|---|---|" + "---|" * (len(SPLIT_ORDER) + 1)]
        for qs in ext:
            out.append(f"| {qs.key} | {len(qs.texts)} | "
                       + " | ".join(str(qs.counts.get(f"cases_by_split.{s}", 0)) for s in SPLIT_ORDER)
                       + f" | {qs.counts.get('n_indexed_queries', 0)} |")
        out.append("")
    for dup, first in duplicates.items():
        out.append(f"- `{dup}` has the same cases as `{first}`: scored once.")
    held = [qs for qs in sets if qs.set == "heldout"]
    if held:
        out += ["", "Held-out queries: " + ", ".join(f"{qs.key} {len(qs.texts)}" for qs in held)
                + (f"; multi-vector skips {held[-1].counts.get('n_indexed_queries', 0)} pooled queries that "
                   "are indexed texts of their own concept (English synonyms)." if "multi" in modes else ".")]
    return "\n".join(out) + "\n"


# The phentrieve German benchmark files (berntpopp/phentrieve, MIT), pinned by commit
# and checksum; `make fetch-benchmarks` downloads them into data/external/phentrieve-benchmarks/german, which the
# default `benchmark.external_sets` pattern reads when present.
PHENTRIEVE_COMMIT = "04476bcc9ec73cb06b61217957005935f0b0dec7"
PHENTRIEVE_URL = (f"https://raw.githubusercontent.com/berntpopp/phentrieve/{PHENTRIEVE_COMMIT}"
                  "/tests/data/benchmarks/german/")
PHENTRIEVE_FILES = {
    "70cases_gemini_v1.json": "ca0461de0abc6c8e6980f7ba183ec70a4aca5767ef0196a25535790e051ba3fc",
    "70cases_o3_v1.json": "b31441a4ec3e3389faac23dacdb8fee664d88fde4d56f655774c590159b57315",
    "small_v1.json": "30d161bd06d2fc01bfb7621c19f653513ba8401f7aa8b27d556e6d3d1c63b656",
    "tiny_v1.json": "30d161bd06d2fc01bfb7621c19f653513ba8401f7aa8b27d556e6d3d1c63b656",
}


def fetch_phentrieve(dest: Path, base_url: str = PHENTRIEVE_URL) -> list[Path]:
    from hpo_embed.ontology.source import download
    return [download(base_url + name, dest, sha, param="make fetch-benchmarks",
                     sha_param="make fetch-benchmarks") for name, sha in PHENTRIEVE_FILES.items()]

