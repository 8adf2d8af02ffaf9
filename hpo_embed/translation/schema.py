"""The per-concept translation file: ``data/translations/HP_0001369.json``.

This module is the contract between the translate stage (which writes the files) and
the stages that read them (pairs, train, benchmark). Schema version 1::

    {
      "schema_version": 1,
      "id": "HP:0001369",
      "en": {
        "label": "Arthritis",
        "definition": "Inflammation of a joint." | null,
        "synonyms": [{"text": "Joint inflammation", "scope": "EXACT", "type": "layperson" | null}]
      },
      "languages": {
        "de": {
          "label":      <Text> | null,
          "definition": <Text> | null,
          "synonyms":   [<Text> + {"scope": "EXACT", "type": "layperson" | null}, ...]
        },
        ...
      }
    }

where a translated ``<Text>`` carries its provenance::

    {"text": "Arthritis", "source": "official" | "mt:google" | "mt:deepl" | "mt:apertium",
     "status": "OFFICIAL" | "CANDIDATE" | "MACHINE", "translator": "DeepL" | "orcid:..." | null,
     "source_text": "<the English text it translates>" | null}

``source_text`` lets the translate stage notice a changed English source and translate
it again. Official synonyms are not aligned to one English synonym: their
``source_text`` is the English label. A field no source could fill is ``null`` (label,
definition) or absent from the list (synonyms).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpo_embed.common import UserError, hpo_id_to_filename

SCHEMA_VERSION = 1
FIELDS = ("label", "definition", "synonyms")
SCOPES = ("EXACT", "RELATED", "BROAD", "NARROW")


def translation_path(folder: Path, hpo_id: str) -> Path:
    return Path(folder) / hpo_id_to_filename(hpo_id)


def _fail(path: Path, msg: str) -> UserError:
    return UserError(f"{path}: {msg}")


def _check_text(path: Path, where: str, t: Any, synonym: bool = False) -> None:
    if not isinstance(t, dict) or not isinstance(t.get("text"), str) or not t["text"].strip():
        raise _fail(path, f"{where}: expected an object with a non-empty 'text'")
    if not isinstance(t.get("source"), str):
        raise _fail(path, f"{where}: missing 'source'")
    if synonym and t.get("scope") not in SCOPES:
        raise _fail(path, f"{where}: scope must be one of {', '.join(SCOPES)}")


def validate(doc: Any, path: Path) -> dict:
    """Check a loaded document against schema version 1; return it unchanged."""
    if not isinstance(doc, dict):
        raise _fail(path, "not a JSON object")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise _fail(path, f"schema_version {doc.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    if not isinstance(doc.get("id"), str) or hpo_id_to_filename(doc["id"]) != path.name:
        raise _fail(path, f"id {doc.get('id')!r} does not match the file name")
    en = doc.get("en")
    if not isinstance(en, dict) or not isinstance(en.get("label"), str):
        raise _fail(path, "'en.label' missing")
    if not isinstance(en.get("synonyms", []), list):
        raise _fail(path, "'en.synonyms' must be a list")
    langs = doc.get("languages")
    if not isinstance(langs, dict):
        raise _fail(path, "'languages' missing")
    for lang, entry in langs.items():
        if not isinstance(entry, dict):
            raise _fail(path, f"languages.{lang}: not an object")
        for f in ("label", "definition"):
            if entry.get(f) is not None:
                _check_text(path, f"languages.{lang}.{f}", entry[f])
        syns = entry.get("synonyms", [])
        if not isinstance(syns, list):
            raise _fail(path, f"languages.{lang}.synonyms: must be a list")
        for i, s in enumerate(syns):
            _check_text(path, f"languages.{lang}.synonyms[{i}]", s, synonym=True)
    return doc


def load(path: Path | str) -> dict:
    """Read and validate one per-ID file; any problem is a ``UserError`` naming it."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"corrupt JSON ({exc})") from None
    return validate(doc, path)


def dumps(doc: dict) -> str:
    """Canonical serialisation (sorted keys, UTF-8, trailing newline): byte-stable."""
    return json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
