"""OBO helpers around obonet: a strict pre-check that names the file and line of a
malformed stanza (obonet itself reports neither), and parsers for the raw ``def`` and
``synonym`` strings that obonet leaves quoted."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from stages.common import UserError

STANZA_TYPES = {"Term", "Typedef", "Instance"}
_TAG = re.compile(r"^[A-Za-z0-9_\-]+:(\s|$)")
_HEADER = re.compile(r"^\[([^\]]*)\]\s*$")
_HPO_ID = re.compile(r"^HP:\d{7}$")
# "text" SCOPE [TYPE] [xrefs]   -- text may contain escaped quotes
_SYNONYM = re.compile(r'^"((?:[^"\\]|\\.)*)"\s+(EXACT|RELATED|BROAD|NARROW)(?:\s+([^\s\[]+))?\s*(\[.*\])?\s*$')
_DEF = re.compile(r'^"((?:[^"\\]|\\.)*)"\s*(\[.*\])?\s*$')


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def check_obo(path: Path) -> None:
    """Raise ``UserError("<file>:<line>: ...")`` for the first structural problem:
    broken UTF-8, an unknown or unclosed stanza header, a line that is not ``tag: value``,
    a stanza without ``id:`` or with two, a duplicate term id."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: invalid UTF-8 (byte 0x{raw[exc.start]:02x})") from None

    seen: dict[str, int] = {}
    stanza: str | None = None
    stanza_line = 0
    ids: list[tuple[str, int]] = []

    def close() -> None:
        if stanza is None:
            return
        if not ids:
            raise UserError(f"{path}:{stanza_line}: [{stanza}] stanza has no id")
        if len(ids) > 1:
            raise UserError(f"{path}:{ids[1][1]}: [{stanza}] stanza has a second id ({ids[1][0]})")
        if stanza == "Term":
            tid, line = ids[0]
            if tid in seen:
                raise UserError(f"{path}:{line}: duplicate term id {tid} (first at line {seen[tid]})")
            seen[tid] = line

    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("!"):
            continue
        if s.startswith("["):
            m = _HEADER.match(s)
            if not m or m.group(1) not in STANZA_TYPES:
                raise UserError(f"{path}:{lineno}: bad stanza header {s!r} "
                                f"(expected one of {', '.join(f'[{t}]' for t in sorted(STANZA_TYPES))})")
            close()
            stanza, stanza_line, ids = m.group(1), lineno, []
            continue
        if not _TAG.match(s):
            raise UserError(f"{path}:{lineno}: not a 'tag: value' line: {s[:60]!r}")
        if stanza is not None and s.startswith("id:"):
            value = s[3:].split("!")[0].strip()
            if not value:
                raise UserError(f"{path}:{lineno}: empty id")
            ids.append((value, lineno))
    close()
    if not seen:
        raise UserError(f"{path}: no [Term] stanzas: not an OBO ontology file")


def parse_def(raw: str | None) -> str | None:
    """``'"Inflammation of a joint." [orcid]'`` -> ``'Inflammation of a joint.'``."""
    if raw is None:
        return None
    m = _DEF.match(raw.strip())
    text = _unescape(m.group(1)) if m else raw.strip().strip('"')
    return text.strip() or None


@dataclass(frozen=True)
class Synonym:
    text: str
    scope: str
    type: str | None
    xrefs: list[str]


def parse_synonym(raw: str, term_id: str = "?") -> Synonym:
    m = _SYNONYM.match(raw.strip())
    if not m:
        raise UserError(f"term {term_id}: cannot parse synonym {raw!r}")
    text, scope, typ, xrefs = m.groups()
    xref_list = [x.strip() for x in (xrefs or "[]")[1:-1].split(",") if x.strip()]
    return Synonym(_unescape(text).strip(), scope, typ, xref_list)


def is_hpo_id(value: str) -> bool:
    return bool(_HPO_ID.match(value))
