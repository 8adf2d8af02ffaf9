"""The translate logic: selected HPO terms -> one ``HP_XXXXXXX.json`` per term (schema v1,
see hpo_embed/translation/schema.py) + counts.

Per language and field, the sources are tried best first (``translate.sources``):

1. ``official`` -- Babelon TSVs of obophenotype/hpo-translations (hpo_embed/translation/babelon.py),
   from the folder ``translate.official`` or ``pinned`` (downloaded once, sha256-checked).
2. ``cache``    -- the existing per-ID file: a machine translation whose ``source_text``
   still equals the current English text is never requested again; an official text is
   kept from the cache when the official files of that language are not available.
3. ``mt``       -- the first backend of ``translate.mt`` that supports the language
   (hpo_embed/translation/mt.py), batched, budgeted (``translate.max_characters``), concurrent.

Each per-ID file is written atomically as soon as it changes, so an interrupted run
loses nothing finished; the rerun sends only what is still missing. A corrupt file is
reported on one line and rebuilt. ``python -m stages.translate --dry-run`` prints the
characters and list-price cost MT would need, and writes nothing.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from hpo_embed.common import UserError, atomic_write_bytes, log, write_json
from hpo_embed.params import TranslateParams
from hpo_embed.translation import babelon, schema
from hpo_embed.translation.mt import (LIST_PRICE_PER_MILLION, ApertiumBackend, Backend, BackendUnavailable, MTScheduler,
                                      _batches, make_backend)
from hpo_embed.translation.official import resolve_official, unused_official_ids
from hpo_embed.translation.plan import FIELDS, LangState, apply_mt, load_existing, load_selected_terms, plan_language


def read_official(params: TranslateParams, downloads: Path | None) -> tuple[Path | None, dict]:
    """The official folder and, per language, its entries (None: no file for that language)."""
    official_dir = resolve_official(params, downloads)
    official: dict[str, babelon.OfficialLanguage | None] = {}
    for lang in params.languages:
        official[lang] = (babelon.read_language(official_dir, lang, params.accepted_statuses)
                          if official_dir is not None else None)
        if official_dir is not None and official[lang] is None:
            log.info("no official file for %s in translate.official", lang)
    return official_dir, official


def read_only_existing(out_dir: Path, ids: set[str]) -> dict[str, dict]:
    """The readable per-ID files, without moving or reporting anything (``--dry-run``)."""
    existing = {}
    for p in out_dir.glob("HP_*.json") if out_dir.is_dir() else []:
        hid = p.stem.replace("_", ":", 1)
        if hid in ids:
            try:
                existing[hid] = schema.load(p)
            except UserError:
                pass
    return existing


def plan(params: TranslateParams, terms: list[dict], official: dict, existing: dict) -> tuple[dict, dict, int]:
    """Per term and language its state; per language the texts MT must translate (each with
    the (term, slot) pairs waiting for it); the number of stale cached translations."""
    use_cache = "cache" in params.sources
    states: dict[str, dict[str, LangState]] = {}
    jobs: dict[str, dict[str, list[tuple[str, str]]]] = {lang: {} for lang in params.languages}
    stale = 0
    for t in tqdm(terms, desc="plan", unit="term", disable=len(terms) < 1000):
        prev_langs = (existing.get(t["id"]) or {}).get("languages") or {}
        states[t["id"]] = {}
        for lang in params.languages:
            st, todo, n_stale = plan_language(t, lang, official[lang], prev_langs.get(lang), use_cache,
                                              params.mt_fields)
            states[t["id"]][lang] = st
            stale += n_stale
            for slot, text in todo:
                jobs[lang].setdefault(text, []).append((t["id"], slot))
    return states, jobs, stale


def choose_backends(params: TranslateParams, jobs: dict, backends: dict | None) -> tuple[dict, dict]:
    """Which backend serves which language: the first of ``translate.mt`` that is available
    and supports it. Returns (language -> backend or None, every backend built)."""
    chosen: dict[str, Backend | None] = {}
    built: dict[str, Backend | None] = dict(backends or {})
    if "mt" not in params.sources:
        return chosen, built
    for lang in params.languages:
        chosen[lang] = None
        if not jobs[lang]:
            continue
        for name in params.mt:
            if name not in built:
                try:
                    built[name] = make_backend(name, params)
                except BackendUnavailable as exc:
                    log.warning("translate.mt: %s unavailable (%s); its languages stay untranslated", name, exc)
                    built[name] = None
            b = built[name]
            if b is not None and b.supports(lang):
                chosen[lang] = b
                break
    return chosen, built


@dataclass
class FileWriter:
    """Writes a term's per-ID file (atomically, only when its bytes change)."""
    params: TranslateParams
    out_dir: Path
    by_id: dict[str, dict]
    existing: dict[str, dict]
    states: dict[str, dict[str, LangState]]

    def document(self, hpo_id: str) -> dict:
        en = self.by_id[hpo_id]
        prev = self.existing.get(hpo_id) or {}
        langs = {k: v for k, v in (prev.get("languages") or {}).items() if k not in self.params.languages}
        for lang, st in self.states[hpo_id].items():
            langs[lang] = st.entry(en)
        return {"schema_version": schema.SCHEMA_VERSION, "id": hpo_id,
                "en": {"label": en["label"], "definition": en["definition"], "synonyms": en["synonyms"]},
                "languages": langs}

    def write(self, hpo_id: str) -> None:
        path = schema.translation_path(self.out_dir, hpo_id)
        data = schema.dumps(self.document(hpo_id)).encode("utf-8")
        try:
            if path.read_bytes() == data:
                return
        except FileNotFoundError:
            pass
        atomic_write_bytes(path, data)

    def apply(self, jobs: dict, lang: str, b: Backend, batch: list[str], results) -> None:
        """One MT batch's results into the waiting slots; the touched files rewritten."""
        touched = set()
        for src, res in zip(batch, results):
            for hpo_id, slot in jobs[lang][src]:
                text = {"text": res.text, "source": f"mt:{b.name}", "status": "MACHINE",
                        "translator": b.translator, "source_text": src}
                if res.unknown:
                    text["unknown_words"] = res.unknown
                if res.text.strip():
                    apply_mt(self.states[hpo_id][lang], slot, text)
                    touched.add(hpo_id)
        for hpo_id in sorted(touched):
            self.write(hpo_id)


def mt_work(params: TranslateParams, jobs: dict, chosen: dict) -> list[tuple[str, Backend, list[str]]]:
    """The MT requests: (language, backend, batch of texts) within each backend's limits."""
    work = []
    for lang in params.languages:
        b = chosen.get(lang)
        if b is None or not jobs[lang]:
            continue
        for batch in _batches(list(jobs[lang]), min(params.batch_segments, b.max_segments),
                              min(params.batch_characters, b.max_characters)):
            work.append((lang, b, batch))
    return work


def run(params: TranslateParams, terms_path: Path, out_dir: Path, metrics_path: Path | None,
        backends: dict[str, Backend] | None = None, dry_run: bool = False,
        report_path: Path | None = None, downloads: Path | None = None) -> dict:
    """Translate into ``out_dir``; ``backends`` (name -> instance) replaces building them from
    params; counts go to ``report_path`` (default ``<metrics stem>.report.json``), the
    headline to ``metrics_path`` (None: neither); ``downloads``: for ``official: pinned``."""
    out_dir = Path(out_dir)
    terms = load_selected_terms(Path(terms_path))
    by_id = {t["id"]: t for t in terms}
    official_dir, official = read_official(params, downloads)
    if dry_run:
        existing, corrupt, moved = read_only_existing(out_dir, set(by_id)), 0, 0
    else:
        existing, corrupt, moved = load_existing(out_dir, set(by_id))
    states, jobs, stale = plan(params, terms, official, existing)
    chosen, built = choose_backends(params, jobs, backends)
    if dry_run:
        return _dry_run(params, jobs, chosen)

    writer = FileWriter(params, out_dir, by_id, existing, states)
    out_dir.mkdir(parents=True, exist_ok=True)
    for hpo_id in tqdm(by_id, desc="write official+cache", unit="file", disable=len(by_id) < 1000):
        writer.write(hpo_id)
    scheduler = MTScheduler(mt_work(params, jobs, chosen), params.concurrency, params.max_characters)
    scheduler.run(lambda lang, b, batch, results: writer.apply(jobs, lang, b, batch, results))

    metrics = _metrics(params, terms, states, chosen, built, scheduler.sent, corrupt, moved, stale,
                       scheduler.budget_hit, official, official_dir)
    if metrics_path is not None:   # headline figures; every count in the report
        metrics_path = Path(metrics_path)
        write_json(report_path or metrics_path.with_name(metrics_path.stem + ".report.json"), metrics)
        write_json(metrics_path, headline(metrics))
    if scheduler.error is not None:
        done_files = len(list(out_dir.glob("HP_*.json")))
        raise UserError(f"{scheduler.error} ({done_files} files kept; rerun to continue)")
    return metrics


def headline(metrics: dict) -> dict:
    """The translate figures tracked as DVC metrics: label coverage per language and the MT
    characters sent (the budget's unit)."""
    return {"label_coverage": {lang: m["labels"]["coverage"] for lang, m in metrics["languages"].items()},
            "characters_sent": metrics["characters_sent"]}


def _dry_run(params, jobs, chosen) -> dict:
    report = {}
    lines = ["language  backend    texts  characters  list price"]
    total = 0.0
    for lang in params.languages:
        b = chosen.get(lang)
        chars = sum(len(t) for t in jobs[lang])
        # a backend that is unavailable here (no credentials) is still priced; apertium is es only
        name = b.name if b is not None else next(
            (n for n in params.mt if n != "apertium" or lang in ApertiumBackend.PAIRS), "none")
        price = chars / 1e6 * LIST_PRICE_PER_MILLION.get(name, 0.0)
        total += price
        report[lang] = {"texts": len(jobs[lang]), "characters": chars, "backend": name, "cost_usd": round(price, 2)}
        lines.append(f"{lang:<9} {name:<9} {len(jobs[lang]):>6} {chars:>11,} {price:>10.2f} USD")
    lines.append(f"total cost at list price: {total:.2f} USD "
                 f"(google {LIST_PRICE_PER_MILLION['google']:g}, deepl {LIST_PRICE_PER_MILLION['deepl']:g} "
                 "USD per million characters)")
    print("\n".join(lines))
    return {"dry_run": True, "languages": report, "cost_usd": round(total, 2)}


def _metrics(params, terms, states, chosen, built, sent, corrupt, moved, stale, budget_hit,
             official, official_dir) -> dict:
    out = {}
    selected = {t["id"] for t in terms}
    for lang in params.languages:
        c = {f: collections.Counter() for f in FIELDS}
        unknown = 0
        for t in terms:
            st = states[t["id"]][lang]
            for field, key in (("label", "labels"), ("definition", "definitions")):
                if getattr(st, field) is not None:
                    c[key][st.origin[field]] += 1
                    unknown += bool(getattr(st, field).get("unknown_words"))
                elif t[field]:
                    c[key]["missing"] += 1
            if st.official_syns is not None:
                c["synonyms"][st.origin["official_syns"]] += len(st.official_syns)
            else:
                for s in t["synonyms"]:
                    if s["text"] in st.syn_by_en:
                        c["synonyms"][st.origin["syn:" + s["text"]]] += 1
                        unknown += bool(st.syn_by_en[s["text"]].get("unknown_words"))
                    else:
                        c["synonyms"]["missing"] += 1
        b = chosen.get(lang)
        stats = b.stats.get(lang, {}) if b is not None else {}
        entry = {key: {k: c[key].get(k, 0) for k in ("official", "cache", "mt", "missing")} for key in FIELDS}
        for key in FIELDS:
            filled = entry[key]["official"] + entry[key]["cache"] + entry[key]["mt"]
            entry[key]["covered"] = filled
        entry["labels"]["coverage"] = round(entry["labels"]["covered"] / max(len(terms), 1), 4)
        entry["mt_backend"] = b.name if b is not None else None
        entry["characters_sent"] = sent.get(lang, 0)
        entry["requests"] = stats.get("requests", 0)
        entry["retries"] = stats.get("retries", 0)
        entry["mt_texts_with_unknown_words"] = unknown   # Apertium marked words it did not know
        entry["official_files"] = official[lang].files if official.get(lang) else []
        # official rows of ids that are no selected term here (not in this hp.obo, obsolete,
        # or outside hpo.roots): never used, but counted so a mismatched release shows
        entry["official_ids_unused"] = unused_official_ids(official.get(lang), selected)
        if entry["official_ids_unused"]:
            log.info("%s: %d ids of the official files are no selected term of this HPO (not used)",
                     lang, entry["official_ids_unused"])
        out[lang] = entry
    return {
        "terms": len(terms),
        "languages": out,
        "official_available": official_dir is not None,
        "corrupt_files_rebuilt": corrupt,
        "files_moved_unselected": moved,
        "stale_mt_retranslated": stale,
        "budget_exhausted": budget_hit,
        "characters_sent": sum(sent.values()),
    }

