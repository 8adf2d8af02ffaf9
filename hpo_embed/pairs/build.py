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
import hashlib
import time
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from hpo_embed.common import ROOT, UserError, log, publish_dir, temp_sibling, write_json, write_parquet
from hpo_embed.retrieval.corpus import load_terms
from hpo_embed.schemas import CONCEPTS_SCHEMA, PAIRS_SCHEMA, QUERIES_SCHEMA, SHARED_SCHEMA
from hpo_embed.params import PAIR_TYPES, PairsParams
from hpo_embed.translation.schema import load as load_translation
from hpo_embed.translation.schema import translation_path

_SOURCE_RANK = {"original": 0, "official": 1, "mt": 2}
_TYPE_INDEX = {t: i for i, t in enumerate(PAIR_TYPES)}
SPLITS = ("train", "dev", "test")
BENCH = "bench"     # concepts of the held-out external benchmark sets
NO_BRANCH = "none"



# --------------------------------------------------------------------------- texts

def normalize(text: str | None) -> str:
    """NFC and collapsed whitespace; ``""`` for None."""
    if not text:
        return ""
    return " ".join(unicodedata.normalize("NFC", text).split())


def source_kind(source: str) -> str:
    """``official`` -> official, ``mt:<engine>`` -> mt, anything else is a user error."""
    if source == "official":
        return "official"
    if source == "mt" or source.startswith("mt:"):
        return "mt"
    raise ValueError(source)


@dataclass
class LangTexts:
    """One concept's texts in one language: ``(text, source)`` tuples."""
    label: tuple[str, str] | None
    definition: tuple[str, str] | None
    synonyms: list[tuple[str, str, str, str | None]]  # text, source, scope, type


def _translated(path: Path, where: tuple, t: dict | None, sources: set[str]) -> tuple[str, str] | None:
    if t is None:
        return None
    try:
        kind = source_kind(t["source"])
    except ValueError:
        field = "languages.{}.{}".format(*where) + (f"[{where[2]}]" if len(where) > 2 else "")
        raise UserError(f"{path}: {field}.source {t['source']!r} is neither 'official' nor 'mt:<engine>'") from None
    return (normalize(t["text"]), kind) if kind in sources else None


def concept_texts(doc: dict, path: Path, languages: list[str] | None,
                  sources: set[str]) -> dict[str, LangTexts]:
    """``{lang: LangTexts}`` of one validated per-ID document (English first)."""
    en = doc["en"]
    out = {"en": LangTexts(
        (normalize(en["label"]), "original"),
        (normalize(en["definition"]), "original") if isinstance(en.get("definition"), str) else None,
        [(normalize(s["text"]), "original", s.get("scope", "EXACT"), s.get("type"))
         for s in en.get("synonyms", []) if isinstance(s, dict) and isinstance(s.get("text"), str)])}
    for lang, entry in doc["languages"].items():
        if lang == "en" or (languages is not None and lang not in languages):
            continue
        syns = []
        for i, s in enumerate(entry.get("synonyms", [])):
            t = _translated(path, (lang, "synonyms", i), s, sources)
            if t is not None:
                syns.append((t[0], t[1], s["scope"], s.get("type")))
        out[lang] = LangTexts(_translated(path, (lang, "label"), entry.get("label"), sources),
                              _translated(path, (lang, "definition"), entry.get("definition"), sources),
                              syns)
    return out


def terms_texts(row: dict) -> dict[str, LangTexts]:
    """English texts of a concept that has no per-ID file, from terms.parquet."""
    syns = row.get("synonyms")
    syns = [] if syns is None else list(syns)
    definition = row.get("definition")
    return {"en": LangTexts((normalize(row["label"]), "original"),
                            (normalize(definition), "original") if isinstance(definition, str) else None,
                            [(normalize(s["text"]), "original", s["scope"], s["type"]) for s in syns])}


# --------------------------------------------------------------------------- split

def _hash_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode("utf-8")).hexdigest()


def assign_splits(concepts: pd.DataFrame, dev_fraction: float, test_fraction: float,
                  seed: int) -> pd.DataFrame:
    """``concepts`` (hpo_id, branch) -> (hpo_id, split, branch), sorted by hpo_id.

    Stratified by branch: in each branch, concepts in seeded-hash order; the first
    ``round(n * test_fraction)`` are test, the next ``round(n * dev_fraction)`` dev.
    """
    df = concepts[["hpo_id", "branch"]].copy()
    df["branch"] = df["branch"].fillna(NO_BRANCH)
    df["_h"] = [_hash_key(seed, i) for i in df["hpo_id"]]
    df = df.sort_values(["branch", "_h"], kind="stable")
    rank = df.groupby("branch").cumcount()
    n = df.groupby("branch")["hpo_id"].transform("size")
    n_test = (n * test_fraction).round().astype(int)
    n_dev = (n * dev_fraction).round().astype(int)
    df["split"] = "train"
    df.loc[rank < n_test + n_dev, "split"] = "dev"
    df.loc[rank < n_test, "split"] = "test"
    return df.sort_values("hpo_id")[["hpo_id", "split", "branch"]].reset_index(drop=True)


def holdout_cases(entries: list[str], all_terms: pd.DataFrame) -> tuple[set[str], set[str], list[dict]]:
    """``(concept ids, casefolded case texts, per-file info)`` of the phentrieve-format
    files ``entries`` (globs allowed), parsed exactly as the benchmark stage parses them."""
    if not entries:
        return set(), set(), []
    from hpo_embed.pairs.external_sets import external_files, load_external_set   # one parser for both stages

    selected = set(all_terms.loc[all_terms["selected"], "id"])
    replaced = ({i: r for i, r in zip(all_terms["id"], all_terms["replaced_by"]) if r}
                if "replaced_by" in all_terms.columns else {})
    ids: set[str] = set()
    texts: set[str] = set()
    files = []
    for name, path in external_files(entries):
        qs = load_external_set(path, selected, replaced)
        ids.update(h for e in qs.expected for h in e)
        texts.update(case_key(t) for t in qs.texts)
        shown = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else name
        files.append({"file": shown, "cases": len(qs.texts), "concepts": len({h for e in qs.expected for h in e})})
    return ids, texts, files


def case_key(text: str) -> str:
    """How a training text is compared with a benchmark case text: NFC, whitespace, casefold."""
    return normalize(text).casefold()


def apply_holdout(concepts: pd.DataFrame, held: set[str]) -> pd.DataFrame:
    """Move the held-out concepts to the ``bench`` split (whatever their hash split was)."""
    concepts = concepts.copy()
    concepts.loc[concepts["hpo_id"].isin(held), "split"] = BENCH
    return concepts


# --------------------------------------------------------------------------- pairs

def language_pairs(langs: list[str], mode: str) -> list[tuple[str, str]]:
    """Ordered (A, B) language pairs for the cross-lingual types (``langs`` starts with en)."""
    if mode == "en<->x":
        return [("en", x) for x in langs if x != "en"]
    return [(a, b) for i, a in enumerate(langs) for b in langs[i + 1:]]


def _combine(a: str, b: str) -> str:
    return a if _SOURCE_RANK[a] >= _SOURCE_RANK[b] else b


def concept_pairs(texts: dict[str, LangTexts], lang_order: list[str], types: set[str],
                  scopes: set[str], mode: str) -> list[tuple]:
    """Raw (anchor, positive, pair_type, lang_a, lang_b, source, synonym_type) rows of one
    concept (texts already normalised), before the hygiene of ``select_pairs``."""
    rows: list[tuple] = []
    present = [lang for lang in lang_order if lang in texts]
    for lang in present:
        t = texts[lang]
        if t.label is None:
            continue
        if "term_def" in types and t.definition is not None:
            rows.append((t.label[0], t.definition[0], "term_def", lang, lang,
                         _combine(t.label[1], t.definition[1]), None))
        if "term_syn" in types:
            for text, src, scope, stype in t.synonyms:
                if scope in scopes:
                    rows.append((t.label[0], text, "term_syn", lang, lang, _combine(t.label[1], src), stype))
    for a, b in language_pairs(present, mode):
        ta, tb = texts[a], texts[b]
        if "xl_term" in types and ta.label and tb.label:
            rows.append((ta.label[0], tb.label[0], "xl_term", a, b, _combine(ta.label[1], tb.label[1]), None))
        if "xl_def" in types and ta.definition and tb.definition:
            rows.append((ta.definition[0], tb.definition[0], "xl_def", a, b,
                         _combine(ta.definition[1], tb.definition[1]), None))
        if "xl_term_def" in types:
            if ta.label and tb.definition:
                rows.append((ta.label[0], tb.definition[0], "xl_term_def", a, b,
                             _combine(ta.label[1], tb.definition[1]), None))
            if tb.label and ta.definition:
                rows.append((tb.label[0], ta.definition[0], "xl_term_def", b, a,
                             _combine(tb.label[1], ta.definition[1]), None))
    return rows


def english_names(texts: dict[str, LangTexts]) -> set[str]:
    """The concept's English label and synonyms, casefolded."""
    en = texts.get("en")
    return {n.casefold() for n in _names(en)} if en is not None else set()


def drop_untranslated_synonyms(texts: dict[str, LangTexts], dropped: collections.Counter) -> None:
    """A translated synonym equal to an English label or synonym of the same concept is an
    untranslated text (an MT engine passing unknown words through, English synonyms in an
    official file): it is dropped, since its language tag would be wrong."""
    english = english_names(texts)
    for lang, t in texts.items():
        if lang == "en" or not t.synonyms:
            continue
        keep = [s for s in t.synonyms if s[0].casefold() not in english]
        dropped["untranslated_synonym"] += len(t.synonyms) - len(keep)
        t.synonyms = keep


def concept_queries(texts: dict[str, LangTexts], lang_order: list[str], scopes: set[str],
                    dropped: collections.Counter | None = None) -> list[tuple]:
    """(text, lang, kind, synonym_type, source) of one concept: labels in the target
    languages (English labels are the corpus) and synonyms in every language. A
    translated label equal to an English name of the concept is not a query in that
    language (it is the English query or the corpus document itself)."""
    rows = []
    english = english_names(texts)
    for lang in lang_order:
        t = texts.get(lang)
        if t is None:
            continue
        if lang != "en" and t.label is not None:
            if t.label[0].casefold() in english:
                if dropped is not None:
                    dropped["query_same_as_english"] += 1
            else:
                rows.append((t.label[0], lang, "label", None, t.label[1]))
        for text, src, scope, stype in t.synonyms:
            if scope in scopes:
                rows.append((text, lang, "synonym", stype, src))
    return rows


# --------------------------------------------------------------------------- hygiene

def _order_key(seed: int, anchor: str, positive: str) -> int:
    """Seeded order of a pair under the caps (crc32: fast and the same on every run)."""
    return zlib.crc32(f"{seed}\t{anchor}\t{positive}".encode("utf-8"))


def select_pairs(rows: list[tuple], seen: set, seed: int, max_per_concept: int,
                 dropped: collections.Counter) -> list[tuple]:
    """Hygiene for one concept's raw rows (texts already NFC/whitespace-normalised).

    Drops empty pairs, identical texts (case-insensitive) and (anchor, positive) pairs
    already kept (for this or an earlier concept: first one wins), then keeps at most
    ``max_per_concept``: round robin over the pair types (PAIR_TYPES order), seeded order
    within a type, so that dozens of synonyms cannot crowd out the other types. Kept
    rows stay in generation order; they are added to ``seen``.
    """
    kept, local = [], set()
    for r in rows:
        a, p = r[0], r[1]
        if not a or not p:
            dropped["empty"] += 1
        elif a.casefold() == p.casefold():
            dropped["identical"] += 1
        elif (a, p) in seen or (a, p) in local:
            dropped["duplicate"] += 1
        else:
            local.add((a, p))
            kept.append(r)
    if len(kept) > max_per_concept:
        by_type: dict[str, list[int]] = collections.defaultdict(list)
        for i, r in enumerate(kept):
            by_type[r[2]].append(i)
        ranked = []
        for t, idx in by_type.items():
            idx.sort(key=lambda i: (_order_key(seed, kept[i][0], kept[i][1]), i))
            ranked.extend((rank, _TYPE_INDEX[t], i) for rank, i in enumerate(idx))
        ranked.sort()
        chosen = sorted(i for _, _, i in ranked[:max_per_concept])
        dropped["max_per_concept"] += len(kept) - len(chosen)
        kept = [kept[i] for i in chosen]
    seen.update((r[0], r[1]) for r in kept)
    return kept


def apply_type_caps(rows: list[tuple], caps: dict[str, int], seed: int,
                    dropped: collections.Counter) -> list[tuple]:
    """Keep at most ``caps[type]`` output rows of a type (first in seeded order); order kept."""
    if not caps:
        return rows
    by_type: dict[str, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(rows):
        by_type[r[3]].append(i)
    drop: set[int] = set()
    for t, idx in by_type.items():
        cap = caps.get(t)
        if cap is not None and len(idx) > cap:
            idx.sort(key=lambda i: (_order_key(seed, rows[i][0], rows[i][1]), i))
            drop.update(idx[cap:])
    dropped["type_cap"] += len(drop)
    return [r for i, r in enumerate(rows) if i not in drop]


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


def _names(t: LangTexts) -> list[str]:
    return ([t.label[0]] if t.label else []) + [s[0] for s in t.synonyms]


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
    branch_of = dict(zip(concepts["hpo_id"], concepts["branch"]))

    present = {p.name for p in translations_dir.glob("HP_*.json")}
    selected_files = {translation_path(translations_dir, i).name for i in split_of}
    sources, scopes, types = set(params.sources), set(params.synonym_scopes), set(params.types)

    # pass 1: read every per-ID file once (validated), keep the normalised texts
    dropped: collections.Counter = collections.Counter()
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
    found = set().union(*(t.keys() for t in texts_of.values()))
    lang_order = ["en"] + (langs if langs is not None else sorted(found - {"en"}))

    # pass 2: pairs (hygiene and per-concept cap on the fly), queries, shared names
    out_rows: dict[str, list[tuple]] = {s: [] for s in SPLITS}
    query_rows: list[tuple] = []
    seen: set[tuple[str, str]] = set()
    first: dict[str, tuple[str, str, str]] = {}      # casefolded name -> (hpo_id, lang, text)
    multi: dict[str, set[tuple[str, str]]] = {}      # names of more than one concept
    with_label: collections.Counter = collections.Counter()
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
                out_rows[split].append((a, p, hpo_id, t, la, lb, src, branch, stype))
        if split in ("dev", "test"):
            query_rows.extend((hpo_id, *q) for q in concept_queries(texts, lang_order, scopes, dropped))
        for lang in lang_order:
            t = texts.get(lang)
            if t is None:
                continue
            with_label[lang] += t.label is not None
            for name in _names(t):
                if not name:
                    continue
                key = name.casefold()
                f = first.setdefault(key, (hpo_id, lang, name))
                if f[0] != hpo_id or key in multi:
                    multi.setdefault(key, {f[:2]}).add((hpo_id, lang))
    del texts_of, seen

    # the tables are written into a temporary sibling and the folder published whole: a
    # failed or killed run leaves the previous data/pairs as it was (no stale split file either)
    final_dir, out_dir = out_dir, temp_sibling(out_dir)
    out_dir.mkdir(parents=True)
    metrics: dict = {"languages": lang_order, "concepts": {}, "pairs": {}, "queries": {}}
    for split in SPLITS:
        rows = apply_type_caps(out_rows.pop(split), params.type_caps, params.seed, dropped)
        write_parquet(out_dir / f"{split}.parquet", _rows_table(rows, PAIRS_SCHEMA), compression="zstd")
        metrics["pairs"][split] = {
            "total": len(rows),
            "by_type": _counts(r[3] for r in rows),
            "by_language": _counts(f"{r[4]}-{r[5]}" for r in rows),
            "by_source": _counts(r[6] for r in rows),
        }
        metrics["concepts"][split] = int((concepts["split"] == split).sum())
        del rows
    metrics["concepts"][BENCH] = int((concepts["split"] == BENCH).sum())
    metrics["concepts"]["total"] = len(concepts)
    metrics["concepts"]["without_translation_file"] = len(without_file)
    metrics["concepts"]["with_label_by_language"] = {lang: with_label.get(lang, 0) for lang in lang_order}
    metrics["concepts"]["ignored_files_not_selected"] = len(present - selected_files)
    write_parquet(out_dir / "concepts.parquet", _frame_table(concepts, CONCEPTS_SCHEMA), compression="zstd")

    shared = sorted(multi)
    shared_df = pd.DataFrame({"text": [first[k][2] for k in shared],
                              "hpo_ids": [sorted({i for i, _ in multi[k]}) for k in shared],
                              "langs": [sorted({lang for _, lang in multi[k]}) for k in shared]})
    queries = pd.DataFrame.from_records(query_rows, columns=["hpo_id", "text", "lang", "kind", "synonym_type", "source"])
    queries = queries[queries["text"].fillna("") != ""]
    queries = queries.drop_duplicates(["hpo_id", "lang", "text"], keep="first")
    is_shared = queries["text"].str.casefold().isin(set(shared))
    dropped["query_shared_text"] += int(is_shared.sum())
    queries = queries[~is_shared].copy()
    queries["split"] = queries["hpo_id"].map(split_of)
    queries = queries.sort_values(["split", "hpo_id", "lang", "kind", "text"], kind="stable")
    write_parquet(out_dir / "queries.parquet", _frame_table(queries, QUERIES_SCHEMA), compression="zstd")
    write_parquet(out_dir / "shared_texts.parquet", _frame_table(shared_df, SHARED_SCHEMA), compression="zstd")
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



def holdout_files(params) -> list[str]:
    """``pairs.holdout_sets`` resolved (null = the files of ``benchmark.external_sets``)."""
    holdout = params.pairs.holdout_sets
    if holdout is None:
        holdout = params.benchmark.external_sets
    if not holdout:
        log.warning("pairs.holdout_sets is empty: benchmark concepts are trained on (release model); "
                    "their benchmark scores are not held-out scores")
    return holdout
