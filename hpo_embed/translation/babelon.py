"""Read the official HPO translations: Babelon TSV files of obophenotype/hpo-translations.

Two kinds of file per language, both optional, found in one folder:

* ``hp-<lang>.babelon.tsv`` -- one row per translated field: ``subject_id``,
  ``predicate_id`` (``rdfs:label`` = label, ``IAO:0000115`` = definition,
  ``oboInOwl:has*Synonym`` = synonym), ``translation_value``, ``translation_status``,
  optionally ``source_value``, ``translator``, ``translation_language``.
* ``hp-<lang>.synonyms.tsv`` -- a ROBOT template: ``subject_id``, ``translation_value``
  (several synonyms joined with ``|``), optionally ``synonym_type``, a status column
  (``translation_status`` / ``Status``; in some files the status sits in ``comment``)
  and a translator column (``translator`` / ``contributor``). Its second line
  (``ID | AL oboInOwl:hasExactSynonym@de ...``) is the template row: it names the
  synonym scope and is not data.

Columns are found by header name, never by position. Rules (documented in README):

* ``NA`` / empty values and the status ``NOT_TRANSLATED`` are never accepted; other
  statuses are accepted when listed in ``translate.accepted_statuses``. A synonym row
  with no status anywhere counts as ``OFFICIAL`` (curated template files).
* A leading ``obsolete `` is removed from values (labels of terms obsolete at the time).
* Duplicate rows for the same term and field: the better status wins
  (``OFFICIAL`` > ``CANDIDATE`` > anything else); between equal statuses the *last* row
  in file order wins. Conflicts are counted (``conflicts``).
* A missing required column, a row with fewer or more fields than the header (extra
  empty trailing fields are fine), an empty ``subject_id`` or a malformed HP id is a
  ``UserError`` naming the file and line.
"""
from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

from hpo_embed.common import UserError

HP_ID = re.compile(r"^HP:\d{7}$")
NEVER_ACCEPTED = {"NOT_TRANSLATED", "NA", ""}
KNOWN_STATUSES = ("OFFICIAL", "CANDIDATE")
STATUS_RANK = {"OFFICIAL": 2, "CANDIDATE": 1}
PREDICATES = {
    "rdfs:label": "label",
    "IAO:0000115": "definition",
    "oboInOwl:hasExactSynonym": "EXACT",
    "oboInOwl:hasRelatedSynonym": "RELATED",
    "oboInOwl:hasBroadSynonym": "BROAD",
    "oboInOwl:hasNarrowSynonym": "NARROW",
}
_OBSOLETE = re.compile(r"^obsolete\s+", re.IGNORECASE)


@dataclasses.dataclass
class Entry:
    text: str
    status: str
    translator: str | None
    source_text: str | None
    scope: str = "EXACT"
    type: str | None = None


@dataclasses.dataclass
class OfficialLanguage:
    lang: str
    labels: dict[str, Entry] = dataclasses.field(default_factory=dict)
    definitions: dict[str, Entry] = dataclasses.field(default_factory=dict)
    synonyms: dict[str, list[Entry]] = dataclasses.field(default_factory=dict)
    files: list[str] = dataclasses.field(default_factory=list)
    rows: int = 0
    rejected: int = 0          # NA/empty, NOT_TRANSLATED, or a status not accepted
    conflicts: int = 0         # duplicate rows with different values

    def counts(self) -> dict[str, int]:
        return {"labels": len(self.labels), "definitions": len(self.definitions),
                "synonyms": sum(len(v) for v in self.synonyms.values()),
                "rows": self.rows, "rejected": self.rejected, "conflicts": self.conflicts}


def babelon_files(folder: Path, lang: str) -> list[Path]:
    """The files of one language in ``folder`` (or its ``babelon/`` subfolder)."""
    out = []
    for sub in (folder, folder / "babelon"):
        for kind in ("babelon", "synonyms"):
            p = sub / f"hp-{lang}.{kind}.tsv"
            if p.is_file():
                out.append(p)
        if out:
            break
    return out


def _clean(value: str | None) -> str:
    value = (value or "").strip()
    if value.upper() == "NA":
        return ""
    return _OBSOLETE.sub("", value).strip()


def _rows(path: Path):
    """Yield (line number, header, row dict); checks the column count of every row."""
    try:
        fh = open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    with fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader)
        except StopIteration:
            raise UserError(f"{path}:1: empty file (expected a header line)") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}:1: not UTF-8") from None
        header = [h.strip() for h in header]
        try:
            for row in reader:
                line = reader.line_num
                if not any(c.strip() for c in row):
                    continue
                if len(row) > len(header) and any(c.strip() for c in row[len(header):]):
                    raise UserError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
                if len(row) < len(header):   # a lost tab shifts every later value: never pad
                    raise UserError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
                yield line, header, dict(zip(header, row))
        except UnicodeDecodeError:
            raise UserError(f"{path}:{reader.line_num + 1}: not UTF-8") from None


def _column(header: list[str], *names: str) -> str | None:
    lower = {h.lower(): h for h in header}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    return None


def _require(path: Path, header: list[str], name: str) -> str:
    col = _column(header, name)
    if col is None:
        raise UserError(f"{path}:1: missing column '{name}' (header: {', '.join(header)})")
    return col


def _check_id(path: Path, line: int, value: str) -> str:
    value = value.strip()
    if not value:
        raise UserError(f"{path}:{line}: empty subject_id")
    if not HP_ID.match(value):
        raise UserError(f"{path}:{line}: subject_id {value!r} is not an HP id (HP:1234567)")
    return value


def _better(new: Entry, old: Entry | None) -> bool:
    """The duplicate rule: better status wins, equal status -> the later row wins."""
    if old is None:
        return True
    return STATUS_RANK.get(new.status, 0) >= STATUS_RANK.get(old.status, 0)


def _accept(status: str, value: str, accepted: set[str]) -> bool:
    return bool(value) and status not in NEVER_ACCEPTED and status in accepted


def read_babelon(path: Path, out: OfficialLanguage, accepted: set[str]) -> None:
    """Add the rows of one ``hp-<lang>.babelon.tsv`` to ``out``."""
    out.files.append(path.name)
    for line, header, row in _rows(path):
        c_id = _require(path, header, "subject_id")
        c_pred = _require(path, header, "predicate_id")
        c_val = _require(path, header, "translation_value")
        c_status = _require(path, header, "translation_status")
        c_lang = _column(header, "translation_language")
        c_src = _column(header, "source_value")
        c_tr = _column(header, "translator")
        out.rows += 1
        hpo_id = _check_id(path, line, row[c_id])
        if c_lang and row[c_lang].strip() and row[c_lang].strip() != out.lang:
            raise UserError(f"{path}:{line}: translation_language {row[c_lang].strip()!r}, "
                            f"expected {out.lang!r}")
        status = row[c_status].strip().upper()
        value = _clean(row[c_val])
        if not _accept(status, value, accepted):
            out.rejected += 1
            continue
        pred = PREDICATES.get(row[c_pred].strip())
        if pred is None:
            out.rejected += 1
            continue
        entry = Entry(text=value, status=status,
                      translator=(row[c_tr].strip() or None) if c_tr else None,
                      source_text=(_clean(row[c_src]) or None) if c_src else None)
        if pred in ("label", "definition"):
            table = out.labels if pred == "label" else out.definitions
            old = table.get(hpo_id)
            if old is not None and old.text != entry.text:
                out.conflicts += 1
            if _better(entry, old):
                table[hpo_id] = entry
        else:
            entry.scope = pred
            _add_synonym(out, hpo_id, entry)


def _add_synonym(out: OfficialLanguage, hpo_id: str, entry: Entry) -> None:
    syns = out.synonyms.setdefault(hpo_id, [])
    for i, s in enumerate(syns):
        if s.text == entry.text:
            if _better(entry, s):
                syns[i] = entry
            return
    syns.append(entry)


_TEMPLATE_SCOPE = re.compile(r"oboInOwl:has(Exact|Related|Broad|Narrow)Synonym")


def read_synonyms(path: Path, out: OfficialLanguage, accepted: set[str]) -> None:
    """Add the rows of one ``hp-<lang>.synonyms.tsv`` (ROBOT template) to ``out``."""
    out.files.append(path.name)
    scope = "EXACT"
    for line, header, row in _rows(path):
        c_id = _require(path, header, "subject_id")
        c_val = _require(path, header, "translation_value")
        c_status = _column(header, "translation_status", "status")
        c_comment = _column(header, "comment")
        c_type = _column(header, "synonym_type")
        c_tr = _column(header, "translator", "contributor")
        raw_id = row[c_id].strip()
        if raw_id == "ID":  # the ROBOT template row
            m = _TEMPLATE_SCOPE.search(row[c_val])
            if m:
                scope = m.group(1).upper()
            continue
        out.rows += 1
        hpo_id = _check_id(path, line, raw_id)
        status = row[c_status].strip().upper() if c_status else ""
        if not status and c_comment:
            token = row[c_comment].strip().upper()
            if token in KNOWN_STATUSES or token in NEVER_ACCEPTED - {""}:
                status = token
        if not status and not c_status:
            status = "OFFICIAL"     # curated template without any status
        stype = None
        if c_type and row[c_type].strip():
            stype = row[c_type].strip().rsplit("#", 1)[-1].rsplit("/", 1)[-1] or None
        translator = (row[c_tr].strip() or None) if c_tr else None
        values = [_clean(v) for v in row[c_val].split("|")]
        values = [v for v in values if v]
        if not values or not _accept(status, values[0], accepted):
            out.rejected += 1
            continue
        for v in values:
            _add_synonym(out, hpo_id, Entry(text=v, status=status, translator=translator,
                                            source_text=None, scope=scope, type=stype))


def read_language(folder: Path, lang: str, accepted: list[str] | set[str]) -> OfficialLanguage | None:
    """Everything official for ``lang`` in ``folder``; ``None`` when it has no file."""
    files = babelon_files(Path(folder), lang)
    if not files:
        return None
    out = OfficialLanguage(lang)
    acc = {s.upper() for s in accepted}
    for p in files:
        if p.name.endswith(".babelon.tsv"):
            read_babelon(p, out, acc)
        else:
            read_synonyms(p, out, acc)
    return out
