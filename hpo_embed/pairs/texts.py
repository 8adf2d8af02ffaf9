"""One concept's texts per language, read from its per-ID translation file (or terms.parquet),
normalised, with their sources."""
from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

from hpo_embed.common import UserError, normalize


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


def english_names(texts: dict[str, LangTexts]) -> set[str]:
    """The concept's English label and synonyms, casefolded."""
    en = texts.get("en")
    return {n.casefold() for n in names_of(en)} if en is not None else set()


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


def names_of(t: LangTexts) -> list[str]:
    return ([t.label[0]] if t.label else []) + [s[0] for s in t.synonyms]
