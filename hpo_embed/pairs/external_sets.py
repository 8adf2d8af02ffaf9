"""phentrieve-format benchmark files (``[{"text": ..., "expected_hpo_ids": [...]}, ...]``):
expanding ``benchmark.external_sets`` / ``pairs.holdout_sets`` entries and parsing a file.

Shared by the pairs stage (hold-out of benchmark concepts and texts) and the benchmark
stage (scoring), so both read a file identically; kept free of heavy imports (no torch)
and a DVC dep of both stages. Rules: see ``load_external_set``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from hpo_embed.common import ROOT, UserError, log

_HPO_ID = re.compile(r"^HP:\d{7}$")
_NAME_OK = re.compile(r"[^a-z0-9_]+")


@dataclass
class QuerySet:
    """One scored unit: ``set`` (``heldout`` or ``phentrieve.<stem>``) x ``lang``."""
    set: str
    lang: str | None
    texts: list[str]
    expected: list[list[str]]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.set}.{self.lang}" if self.lang else self.set


def safe_name(name: str) -> str:
    return _NAME_OK.sub("_", name.lower()).strip("_")


def load_external_set(path: Path, corpus_ids: set[str], replaced_by: dict[str, str]) -> QuerySet:
    """Parse and check one phentrieve-format file (rules in the module docstring)."""
    if not path.is_file():
        raise UserError(f"{path}: external benchmark file not found (params.yaml: benchmark.external_sets)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of cases, got {type(data).__name__}")
    if not data:
        raise UserError(f"{path}: no cases (an empty list); remove it from benchmark.external_sets")
    texts, expected = [], []
    counts = {"n_cases": len(data), "n_skipped_cases": 0, "n_dropped_ids": 0, "n_replaced_ids": 0}
    for i, case in enumerate(data):
        where = f"{path}: case {i}"
        if not isinstance(case, dict):
            raise UserError(f"{where}: expected an object, got {type(case).__name__}")
        for key in ("text", "expected_hpo_ids"):
            if key not in case:
                raise UserError(f"{where}: missing key {key!r}")
        text, ids = case["text"], case["expected_hpo_ids"]
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: 'text' must be a non-empty string, got {text!r}")
        if not isinstance(ids, list) or not ids:
            raise UserError(f"{where}: 'expected_hpo_ids' must be a non-empty list, got {ids!r}")
        kept: list[str] = []
        for hid in ids:
            if not isinstance(hid, str) or not _HPO_ID.match(hid):
                raise UserError(f"{where}: 'expected_hpo_ids' has {hid!r}, not an HPO id (HP:NNNNNNN)")
            if hid not in corpus_ids and replaced_by.get(hid) in corpus_ids:
                counts["n_replaced_ids"] += 1
                hid = replaced_by[hid]
            if hid not in corpus_ids:
                counts["n_dropped_ids"] += 1
                continue
            if hid not in kept:
                kept.append(hid)
        if not kept:
            counts["n_skipped_cases"] += 1
            continue
        texts.append(text)
        expected.append(kept)
    for what in ("n_replaced_ids", "n_dropped_ids", "n_skipped_cases"):
        if counts[what]:
            log.warning("%s: %s = %d (ids not in the corpus; see the benchmark README section)",
                        path, what, counts[what])
    if not texts:
        raise UserError(f"{path}: none of its {len(data)} cases has an expected id in the corpus "
                        "(all skipped); check the ids or hpo.roots")
    return QuerySet(set="phentrieve." + safe_name(path.stem), lang=None, texts=texts,
                    expected=expected, counts=counts)


def external_files(entries: list[str]) -> list[tuple[str, Path]]:
    """Expand ``benchmark.external_sets``: a plain path must exist (else an error naming
    it); a glob pattern (``*``, ``?``, ``[``) may match nothing, which is logged once with
    the command that fetches the phentrieve files."""
    out = []
    for entry in entries:
        if any(ch in entry for ch in "*?["):
            base = Path("/") if Path(entry).is_absolute() else ROOT
            matches = sorted(base.glob(entry.lstrip("/")))
            if not matches:
                log.warning("benchmark.external_sets: %s matches no file; `make fetch-benchmarks` "
                            "downloads the phentrieve German sets there", entry)
            out += [(str(m), m) for m in matches]
        else:
            out.append((entry, Path(entry) if Path(entry).is_absolute() else ROOT / entry))
    return out
