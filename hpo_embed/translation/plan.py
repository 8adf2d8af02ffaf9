"""What each term still needs per language: official text, a still-valid cached machine
translation, or a new MT request (``plan_language``); the per-ID files already written."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from hpo_embed.common import UserError, log
from hpo_embed.translation import babelon, schema
from hpo_embed.translation.official import official_text

UNSELECTED = ".unselected"      # subfolder for files of terms no longer selected (kept, not read by pairs)


FIELDS = ("labels", "definitions", "synonyms")


class LangState:
    """One term x one language while the stage runs: the chosen texts and their origin
    this run ('official', 'cache' or 'mt')."""

    __slots__ = ("label", "definition", "official_syns", "syn_by_en", "origin")

    def __init__(self) -> None:
        self.label: dict | None = None
        self.definition: dict | None = None
        self.official_syns: list[dict] | None = None
        self.syn_by_en: dict[str, dict] = {}
        self.origin: dict[str, str] = {}   # 'label' / 'definition' / 'syn:<en text>' / 'official_syns'

    def entry(self, en: dict) -> dict:
        if self.official_syns is not None:
            syns = self.official_syns
        else:
            syns = []
            for s in en["synonyms"]:
                t = self.syn_by_en.get(s["text"])
                if t is not None:
                    syns.append({**t, "scope": s["scope"], "type": s.get("type")})
        return {"label": self.label, "definition": self.definition, "synonyms": syns}


def _is_mt(t) -> bool:
    return isinstance(t, dict) and str(t.get("source", "")).startswith("mt:")


def plan_language(en: dict, lang: str, off: babelon.OfficialLanguage | None, prev: dict | None,
                  use_cache: bool, fields: list[str]) -> tuple[LangState, list[tuple[str, str]], int]:
    """Fill one term's language from the official files and the cache; return the state,
    the MT jobs still needed as (slot, English text), and how many cached machine
    translations were dropped because their English source changed."""
    st = LangState()
    hpo_id = en["id"]
    stale = 0
    prev = prev if (use_cache and isinstance(prev, dict)) else {}
    for field in ("label", "definition"):
        table = None if off is None else (off.labels if field == "label" else off.definitions)
        e = table.get(hpo_id) if table is not None else None
        if e is not None:
            setattr(st, field, official_text(e, e.source_text))
            st.origin[field] = "official"
            continue
        old = prev.get(field)
        if isinstance(old, dict) and old.get("text"):
            if old.get("source") == "official" and off is None:
                setattr(st, field, old)
                st.origin[field] = "cache"
                continue
            if _is_mt(old):
                if old.get("source_text") == en[field]:
                    setattr(st, field, old)
                    st.origin[field] = "cache"
                    continue
                stale += 1
    off_syns = off.synonyms.get(hpo_id) if off is not None else None
    prev_syns = [s for s in prev.get("synonyms") or [] if isinstance(s, dict) and s.get("text")]
    if off_syns:
        st.official_syns = [official_text(e, en["label"], synonym=True) for e in off_syns]
        st.origin["official_syns"] = "official"
    elif off is None and any(s.get("source") == "official" for s in prev_syns):
        st.official_syns = [s for s in prev_syns if s.get("source") == "official"]
        st.origin["official_syns"] = "cache"
    else:
        by_src = {s.get("source_text"): s for s in prev_syns if _is_mt(s)}
        en_texts = {s["text"] for s in en["synonyms"]}
        stale += sum(1 for k in by_src if k not in en_texts)
        for s in en["synonyms"]:
            old = by_src.get(s["text"])
            if old is not None:
                st.syn_by_en[s["text"]] = {k: v for k, v in old.items() if k not in ("scope", "type")}
                st.origin["syn:" + s["text"]] = "cache"
    jobs: list[tuple[str, str]] = []
    if "label" in fields and st.label is None and en["label"]:
        jobs.append(("label", en["label"]))
    if "definition" in fields and st.definition is None and en["definition"]:
        jobs.append(("definition", en["definition"]))
    if "synonyms" in fields and st.official_syns is None:
        for s in en["synonyms"]:
            if s["text"] not in st.syn_by_en:
                jobs.append(("syn:" + s["text"], s["text"]))
    return st, jobs, stale


def apply_mt(st: LangState, slot: str, text: dict) -> None:
    if slot in ("label", "definition"):
        setattr(st, slot, text)
    else:
        st.syn_by_en[slot[4:]] = text
    st.origin[slot] = "mt"


def load_selected_terms(path: Path) -> list[dict]:

    if not Path(path).is_file():
        raise UserError(f"{path}: not found (run `dvc repro parse_hpo` first)")
    table = pq.read_table(path, columns=["id", "label", "definition", "synonyms", "selected"])
    out = []
    for row in table.to_pylist():
        if not row["selected"]:
            continue
        syns, seen = [], set()
        for s in row["synonyms"] or []:
            if s["text"] and s["text"] not in seen:
                seen.add(s["text"])
                syns.append({"text": s["text"], "scope": s["scope"] or "EXACT", "type": s.get("type")})
        out.append({"id": row["id"], "label": row["label"], "definition": row["definition"] or None,
                    "synonyms": syns})
    return out


def load_existing(out_dir: Path, selected: set[str]) -> tuple[dict[str, dict], int, int]:
    """Read every per-ID file: ``({id: doc}, corrupt, moved)``. Corrupt files are reported
    (one line each) and rebuilt; leftovers of interrupted writes are removed; files of
    terms no longer selected move to ``.unselected/`` (kept for the cache)."""
    docs: dict[str, dict] = {}
    corrupt = moved = 0
    if not out_dir.is_dir():
        return docs, 0, 0
    for tmp in out_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    unsel = out_dir / UNSELECTED
    paths = sorted(out_dir.glob("HP_*.json"))
    if unsel.is_dir():
        paths += sorted(p for p in unsel.glob("HP_*.json") if not (out_dir / p.name).exists())
    for path in tqdm(paths, desc="read cache", unit="file", disable=len(paths) < 1000):
        hpo_id = path.stem.replace("_", ":", 1)
        try:
            doc = schema.load(path)
        except UserError as exc:
            log.warning("%s -- rebuilding it", exc)
            corrupt += 1
            path.unlink(missing_ok=True)
            continue
        if hpo_id in selected:
            docs[hpo_id] = doc
            if path.parent == unsel:
                path.unlink()
        elif path.parent == out_dir:
            unsel.mkdir(exist_ok=True)
            path.replace(unsel / path.name)
            moved += 1
    return docs, corrupt, moved
