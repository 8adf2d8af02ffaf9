"""Stage pairs: per-ID translation files -> leakage-free Parquet training pairs.

Inputs: ``data/hpo/terms.parquet`` (the selected concepts and their top-level branch)
and ``data/translations/HP_XXXXXXX.json`` (schema v1, ``hpo_embed.translation.schema``).
Outputs (contract in docs/HELPERS.md):

- ``data/pairs/{train,dev,test}.parquet``: anchor, positive, hpo_id, pair_type,
  lang_anchor, lang_positive, source (official|mt|original), branch, synonym_type;
- ``data/pairs/concepts.parquet``: hpo_id, split, branch (every selected concept);
- ``data/pairs/queries.parquet``: retrieval queries of the dev and test concepts;
- ``data/pairs/shared_texts.parquet``: texts naming more than one concept (report);
- ``metrics/pairs.json``.

Pair types, within one language L (English and each target language):
``term_def`` (label_L, definition_L), ``term_syn`` (label_L, synonym_L; scopes from
``pairs.synonym_scopes``, the synonym's type kept in ``synonym_type``). Across the language
pairs (A, B) allowed by ``pairs.language_pairs`` (``en<->x``: A = English, B = each target
language; ``all``: every pair, A before B in the order en, *translate.languages*):
``xl_term`` (label_A, label_B), ``xl_def`` (definition_A, definition_B) and ``xl_term_def``
in both directions (label_A, definition_B) and (label_B, definition_A).

Split: by concept, over *all* selected concepts of terms.parquet (also those without a
per-ID file), never by pair. Within each top-level branch the concepts are ordered by
``sha256(f"{seed}:{hpo_id}")``; the first ``round(n * test_fraction)`` are test, the next
``round(n * dev_fraction)`` dev, the rest train. The split reads neither the languages nor
the translations, so adding a language never moves a concept.

A selected concept without a per-ID file gets its English texts from terms.parquet
(counted in the metrics); per-ID files of concepts that are not selected are ignored.
A pair's ``source`` is ``mt`` if either text is machine-translated, else ``official`` if
either is an official translation, else ``original`` (English from the HPO).

Hold-out (``pairs.holdout_sets``; null = the files of ``benchmark.external_sets``, [] =
off): every concept expected by a case of those phentrieve-format files (obsolete ids
mapped to their replacement) goes to the ``bench`` split -- no pairs, no queries, never
train or dev -- and every pair with a text equal to a case text (NFC, casefold) is
dropped from every split. Counts in ``metrics.holdout``; ``reports/pairs.json`` lists
the held-out files. The files are not DVC deps (optional, globbed): after replacing them
in place run ``dvc repro -f pairs``.

Hygiene (counts in ``metrics.dropped``): texts NFC- and whitespace-normalised; translated
synonyms equal to an English name of the concept dropped (untranslated pass-through);
empty pairs, identical texts (case-insensitive) and repeated (anchor, positive) pairs
dropped; ``pairs.max_per_concept`` (round robin over types) and ``pairs.type_caps``.
Queries: texts naming two concepts (``shared_texts.parquet``) and translated labels equal
to an English name of the concept are not queries.
"""
from __future__ import annotations

import collections
import gc
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from hpo_embed.common import UserError, case_key, log, publish_dir, temp_sibling, write_json, write_parquet
from hpo_embed.pairs.generate import apply_type_caps, concept_pairs, concept_queries, select_pairs
from hpo_embed.pairs.splits import BENCH, SPLITS, apply_holdout, assign_splits, holdout_cases
from hpo_embed.pairs.texts import LangTexts, concept_texts, drop_untranslated_synonyms, names_of, terms_texts
from hpo_embed.params import PairsParams
from hpo_embed.retrieval.corpus import load_terms
from hpo_embed.schemas import CONCEPTS_SCHEMA, PAIRS_SCHEMA, QUERIES_SCHEMA, SHARED_SCHEMA
from hpo_embed.translation.schema import load as load_translation
from hpo_embed.translation.schema import translation_path

# --------------------------------------------------------------------------- texts


# --------------------------------------------------------------------------- split


# --------------------------------------------------------------------------- pairs


# --------------------------------------------------------------------------- hygiene


# --------------------------------------------------------------------------- output

def _rows_table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    if not rows:
        return schema.empty_table()
    cols = list(zip(*rows))
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, schema)], schema=schema)


def _frame_table(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    if df.empty:
        return schema.empty_table()
    # from_pandas maps NaN/None to null; the pandas metadata (index, versions) is dropped
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    return table.replace_schema_metadata(None)


def _counts(values) -> dict[str, int]:
    return {k: int(v) for k, v in sorted(collections.Counter(values).items())}


# --------------------------------------------------------------------------- run


def target_languages(languages: list[str] | None) -> list[str] | None:
    """The target languages in their given order, without English and repeats."""
    if languages is None:
        return None
    out: list[str] = []
    for lang in languages:
        if lang != "en" and lang not in out:
            out.append(lang)
    return out


def run(params: PairsParams, languages: list[str] | None, translations_dir: Path,
        terms_path: Path, out_dir: Path, metrics_path: Path, progress: bool = True,
        holdout: list[str] | None = None, report_path: Path | None = None) -> dict:
    """Build every output; ``languages`` is ``translate.languages`` (None: every language
    found in the per-ID files, in alphabetical order); ``holdout``: the benchmark files
    to hold out (``pairs.holdout_sets`` resolved; None = none). Returns the full report;
    ``metrics_path`` gets its headline figures (``headline``), ``report_path`` all of it
    (default: ``report_for(metrics_path)``)."""
    start = time.perf_counter()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of small tuples and no cycles: the collector would only rescan them
    try:
        return _run(params, languages, Path(translations_dir), Path(terms_path), Path(out_dir),
                    Path(metrics_path), progress, start, holdout or [],
                    Path(report_path) if report_path else report_for(Path(metrics_path)))
    finally:
        if gc_was_enabled:
            gc.enable()


def report_for(metrics_path: Path) -> Path:
    """The default report path: ``<metrics stem>.report.json`` beside the metrics."""
    return metrics_path.with_name(metrics_path.stem + ".report.json")


def headline(report: dict) -> dict:
    """The few pairs figures tracked as DVC metrics (the rest stays in reports/pairs.json)."""
    return {"concepts": {s: report["concepts"].get(s, 0) for s in (*SPLITS, BENCH)},
            "pairs_train": report["pairs"]["train"]["total"],
            "queries": {s: report["queries"][s]["total"] for s in ("dev", "test")},
            "holdout_dropped_pairs": report["holdout"]["dropped_pairs"]}


@dataclass
class Collected:
    """Pass 2's result: pair rows per split, query rows, names shared by several concepts."""
    rows: dict[str, list[tuple]]
    queries: list[tuple]
    first: dict[str, tuple[str, str, str]]      # casefolded name -> (hpo_id, lang, text)
    multi: dict[str, set[tuple[str, str]]]      # names of more than one concept
    with_label: collections.Counter


def read_texts(split_of: dict[str, str], translations_dir: Path, terms: pd.DataFrame, langs: list[str] | None,
               sources: set[str], progress: bool, dropped: collections.Counter) -> tuple[dict, list[str]]:
    """Pass 1: every selected concept's texts (its per-ID file read once and validated, else
    English from terms.parquet); returns the texts and the concepts without a file."""
    present = {p.name for p in translations_dir.glob("HP_*.json")}
    texts_of: dict[str, dict[str, LangTexts]] = {}
    without_file = []
    for hpo_id in tqdm(sorted(split_of), desc="pairs: reading per-ID files", unit="file",
                       disable=not progress, mininterval=1.0):
        path = translation_path(translations_dir, hpo_id)
        if path.name in present:
            texts_of[hpo_id] = concept_texts(load_translation(path), path, langs, sources)
        else:
            without_file.append(hpo_id)
    if without_file:
        log.warning("%d selected concepts have no per-ID file in %s (first: %s): English from terms.parquet",
                    len(without_file), translations_dir, without_file[0])
        rows = terms[terms["id"].isin(set(without_file))][["id", "label", "definition", "synonyms"]]
        for r in rows.to_dict("records"):
            texts_of[r["id"]] = terms_texts(r)
    for texts in texts_of.values():
        drop_untranslated_synonyms(texts, dropped)
    return texts_of, without_file


def collect(texts_of: dict, split_of: dict[str, str], branch_of: dict[str, str], lang_order: list[str],
            params: PairsParams, case_texts: set[str], dropped: collections.Counter) -> Collected:
    """Pass 2: pairs (hygiene and per-concept cap on the fly), queries, shared names."""
    scopes, types = set(params.synonym_scopes), set(params.types)
    c = Collected({s: [] for s in SPLITS}, [], {}, {}, collections.Counter())
    seen: set[tuple[str, str]] = set()
    for hpo_id in sorted(texts_of):
        texts = texts_of[hpo_id]
        split, branch = split_of[hpo_id], branch_of[hpo_id]
        if split != BENCH:
            raw = concept_pairs(texts, lang_order, types, scopes, params.language_pairs)
            if case_texts:
                keep = [r for r in raw if case_key(r[0]) not in case_texts and case_key(r[1]) not in case_texts]
                dropped["holdout_case_text"] += len(raw) - len(keep)
                raw = keep
            for a, p, t, la, lb, src, stype in select_pairs(raw, seen, params.seed, params.max_per_concept,
                                                            dropped):
                c.rows[split].append((a, p, hpo_id, t, la, lb, src, branch, stype))
        if split in ("dev", "test"):
            c.queries.extend((hpo_id, *q) for q in concept_queries(texts, lang_order, scopes, dropped))
        for lang in lang_order:
            t = texts.get(lang)
            if t is None:
                continue
            c.with_label[lang] += t.label is not None
            for name in names_of(t):
                if not name:
                    continue
                key = name.casefold()
                f = c.first.setdefault(key, (hpo_id, lang, name))
                if f[0] != hpo_id or key in c.multi:
                    c.multi.setdefault(key, {f[:2]}).add((hpo_id, lang))
    return c


def write_pair_tables(out_dir: Path, c: Collected, params: PairsParams, dropped: collections.Counter) -> dict:
    """train/dev/test.parquet (per-type caps applied); their counts."""
    counts = {}
    for split in SPLITS:
        rows = apply_type_caps(c.rows.pop(split), params.type_caps, params.seed, dropped)
        write_parquet(out_dir / f"{split}.parquet", _rows_table(rows, PAIRS_SCHEMA), compression="zstd")
        counts[split] = {
            "total": len(rows),
            "by_type": _counts(r[3] for r in rows),
            "by_language": _counts(f"{r[4]}-{r[5]}" for r in rows),
            "by_source": _counts(r[6] for r in rows),
        }
    return counts


def write_query_tables(out_dir: Path, c: Collected, split_of: dict[str, str],
                       dropped: collections.Counter) -> tuple[pd.DataFrame, list[str]]:
    """queries.parquet (queries naming another concept too are dropped) and shared_texts.parquet."""
    shared = sorted(c.multi)
    shared_df = pd.DataFrame({"text": [c.first[k][2] for k in shared],
                              "hpo_ids": [sorted({i for i, _ in c.multi[k]}) for k in shared],
                              "langs": [sorted({lang for _, lang in c.multi[k]}) for k in shared]})
    queries = pd.DataFrame.from_records(c.queries, columns=["hpo_id", "text", "lang", "kind", "synonym_type", "source"])
    queries = queries[queries["text"].fillna("") != ""]
    queries = queries.drop_duplicates(["hpo_id", "lang", "text"], keep="first")
    is_shared = queries["text"].str.casefold().isin(set(shared))
    dropped["query_shared_text"] += int(is_shared.sum())
    queries = queries[~is_shared].copy()
    queries["split"] = queries["hpo_id"].map(split_of)
    queries = queries.sort_values(["split", "hpo_id", "lang", "kind", "text"], kind="stable")
    write_parquet(out_dir / "queries.parquet", _frame_table(queries, QUERIES_SCHEMA), compression="zstd")
    write_parquet(out_dir / "shared_texts.parquet", _frame_table(shared_df, SHARED_SCHEMA), compression="zstd")
    return queries, shared


def _run(params: PairsParams, languages: list[str] | None, translations_dir: Path, terms_path: Path,
         out_dir: Path, metrics_path: Path, progress: bool, start: float, holdout: list[str],
         report_path: Path) -> dict:
    if not translations_dir.is_dir():
        raise UserError(f"{translations_dir}: missing; run the translate stage first (dvc repro translate)")
    langs = target_languages(languages)
    terms = load_terms(Path(terms_path))
    if terms.empty:
        raise UserError(f"{terms_path}: no selected concepts (check hpo.roots)")
    concepts = assign_splits(terms.rename(columns={"id": "hpo_id"}), params.dev_fraction,
                             params.test_fraction, params.seed)
    held_ids, case_texts, held_files = holdout_cases(holdout, load_terms(terms_path, selected_only=False))
    moved = concepts.loc[concepts["hpo_id"].isin(held_ids), "split"].value_counts().to_dict()
    concepts = apply_holdout(concepts, held_ids)
    if holdout:
        log.info("pairs: holding out %d concepts of %d benchmark file(s) (from train %d, dev %d, test %d)",
                 len(held_ids), len(held_files), moved.get("train", 0), moved.get("dev", 0), moved.get("test", 0))
    split_of = dict(zip(concepts["hpo_id"], concepts["split"]))
    dropped: collections.Counter = collections.Counter()
    texts_of, without_file = read_texts(split_of, translations_dir, terms, langs, set(params.sources), progress,
                                        dropped)
    found = set().union(*(t.keys() for t in texts_of.values()))
    lang_order = ["en"] + (langs if langs is not None else sorted(found - {"en"}))
    c = collect(texts_of, split_of, dict(zip(concepts["hpo_id"], concepts["branch"])), lang_order, params,
                case_texts, dropped)
    del texts_of

    # the tables are written into a temporary sibling and the folder published whole: a
    # failed or killed run leaves the previous data/pairs as it was (no stale split file either)
    final_dir, out_dir = out_dir, temp_sibling(out_dir)
    out_dir.mkdir(parents=True)
    metrics: dict = {"languages": lang_order, "concepts": {}, "pairs": write_pair_tables(out_dir, c, params, dropped),
                     "queries": {}}
    present = {p.name for p in translations_dir.glob("HP_*.json")}
    selected_files = {translation_path(translations_dir, i).name for i in split_of}
    metrics["concepts"] = {**{s: int((concepts["split"] == s).sum()) for s in (*SPLITS, BENCH)},
                           "total": len(concepts), "without_translation_file": len(without_file),
                           "with_label_by_language": {lang: c.with_label.get(lang, 0) for lang in lang_order},
                           "ignored_files_not_selected": len(present - selected_files)}
    write_parquet(out_dir / "concepts.parquet", _frame_table(concepts, CONCEPTS_SCHEMA), compression="zstd")
    queries, shared = write_query_tables(out_dir, c, split_of, dropped)
    publish_dir(out_dir, final_dir)
    for split in ("dev", "test"):
        q = queries[queries["split"] == split]
        metrics["queries"][split] = {"total": len(q), "by_language": _counts(q["lang"]), "by_kind": _counts(q["kind"])}
    metrics["shared_texts"] = len(shared)
    metrics["dropped"] = {k: int(dropped.get(k, 0)) for k in
                          ("empty", "identical", "duplicate", "untranslated_synonym", "max_per_concept",
                           "type_cap", "query_shared_text", "query_same_as_english", "holdout_case_text")}
    metrics["holdout"] = {"files": held_files, "concepts": len(held_ids),
                          "concepts_from": {s: int(moved.get(s, 0)) for s in SPLITS},
                          "case_texts": len(case_texts), "dropped_pairs": int(dropped.get("holdout_case_text", 0))}
    write_json(report_path, metrics)
    write_json(metrics_path, headline(metrics))
    log.info("pairs: %d concepts (%s), %d/%d/%d train/dev/test pairs, %d queries, %d shared texts in %.1f s",
             len(concepts), ", ".join(lang_order), metrics["pairs"]["train"]["total"],
             metrics["pairs"]["dev"]["total"], metrics["pairs"]["test"]["total"], len(queries), len(shared),
             time.perf_counter() - start)
    return metrics


