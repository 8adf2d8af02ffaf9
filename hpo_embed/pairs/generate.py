"""The pairs and queries of one concept (every pair type and language pair), hygiene, the
per-concept cap and the per-type caps."""
from __future__ import annotations

import collections
import zlib

from hpo_embed.pairs.texts import LangTexts, english_names
from hpo_embed.params import PAIR_TYPES

_SOURCE_RANK = {"original": 0, "official": 1, "mt": 2}


_TYPE_INDEX = {t: i for i, t in enumerate(PAIR_TYPES)}


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
