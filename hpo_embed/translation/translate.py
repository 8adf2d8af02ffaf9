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
import concurrent.futures as cf
from pathlib import Path

from tqdm import tqdm

from hpo_embed.translation import babelon
from hpo_embed.translation import schema
from hpo_embed.common import ROOT, UserError, atomic_write_bytes, log, write_json
from hpo_embed.ontology.source import download
from hpo_embed.translation.mt import LIST_PRICE_PER_MILLION, ApertiumBackend, Backend, BackendUnavailable, make_backend
from hpo_embed.params import TranslateParams

UNSELECTED = ".unselected"      # subfolder for files of terms no longer selected (kept, not read by pairs)

# The pinned official files: obophenotype/hpo-translations, babelon/, at this commit.
# (hp-cs/nl/tr .babelon.tsv are over 4 MiB and not pinned; their synonym files are.)
PINNED_COMMIT = "62f1d254f93e47d87e874783019ccd7480400e76"
PINNED_BASE_URL = f"https://raw.githubusercontent.com/obophenotype/hpo-translations/{PINNED_COMMIT}/babelon/"
PINNED_FOLDER = f"hpo-translations-{PINNED_COMMIT[:12]}"   # inside the downloads folder
PINNED_FILES = {
    "hp-cs.synonyms.tsv": "c2bbe8e5254daaf2fdec59bf895e0488d02db648575e7de751a237bb6f41eefa",
    "hp-de.babelon.tsv": "bda90165c9f0e1688b0daa02625028cbc2410950ed7637ebb8e09a388a113c7c",
    "hp-de.synonyms.tsv": "488e9e1fcbbff66cd99927dc2fda0518bd506558ca068f61b4839d89acee1430",
    "hp-es.babelon.tsv": "00972e33775a0340ad7b45620f0ff1d2794766c45beb937a165ee86e6f16ed9a",
    "hp-fr.babelon.tsv": "6a2c28bb381769583ebcdfd6901d1e99d3a3fda29b1ff052e69f965ad72398ad",
    "hp-fr.synonyms.tsv": "bb94699ec496161cad0813b22d00a3db1394b971605f246dd8d452d9655c5454",
    "hp-it.babelon.tsv": "4349bde8befa25309cba295d6928234f7ef58bd8903c87778abe6cac0962ae21",
    "hp-it.synonyms.tsv": "426e6e6683be1850585568d245ecc2366dcaa0600ddd1a96c729ba6c7a6f57de",
    "hp-ja.babelon.tsv": "cefe15af19d988598eee0077cc75e2d488837adb746522f4cb5d1312fc343eea",
    "hp-nl.synonyms.tsv": "40cf0538d436125cc7c6205d4966c5b57f6f3244288e33eeb94686f6545166a4",
    "hp-pt.babelon.tsv": "31f642ef8f6951287d9386d3b3454990504143520161ef4615c1c5c0ed85ebd0",
    "hp-tr.synonyms.tsv": "5981fbbcf236b3c25ec38517cc8e2efa360ac3bad3c28945f6170bb83b3ffb54",
    "hp-zh.babelon.tsv": "64a30d5f065e1180fa6a30c192dd84aa403cd1b44f2b24ee883fcde948b1ca53",
}
ADD_TRANSLATIONS_HINT = ("run `make fetch-translations` (downloads the pinned official files into "
                         "data/external/hpo-translations), or `dvc exp run -S translate.official=pinned`, "
                         "or point translate.official at a folder of Babelon TSVs")
FIELDS = ("labels", "definitions", "synonyms")


# --------------------------------------------------------------------------- official files

def fetch_pinned(dest: Path, languages: list[str] | None = None,
                 base_url: str | None = None, timeout: float = 60.0) -> Path:
    """Download the pinned official files (of ``languages``, default all) once into
    ``dest``; each is checked against its SHA-256 and written atomically."""
    base_url = base_url or PINNED_BASE_URL
    names = [n for n in PINNED_FILES if languages is None or n.split(".")[0][3:] in languages]
    for name in tqdm(names, desc="official files", unit="file", disable=len(names) < 2):
        download(base_url + name, dest, PINNED_FILES[name], timeout=timeout,
                 param="translate.official", sha_param="translate.official")
    return dest


def resolve_official(params: TranslateParams, downloads: Path | None) -> Path | None:
    """The folder of official files, or None (with one warning) when there is none;
    ``official: pinned`` downloads them once into ``downloads``."""
    if "official" not in params.sources:
        return None
    if params.official == "pinned":
        if downloads is None:
            raise TypeError("translate.official: pinned needs a downloads folder")
        return fetch_pinned(Path(downloads) / PINNED_FOLDER, params.languages)
    folder = Path(params.official).expanduser()
    if not folder.is_absolute():
        folder = ROOT / folder
    if not folder.is_dir():
        log.warning("translate.official: %s not found, so no official translations are used; to add them, %s",
                    params.official, ADD_TRANSLATIONS_HINT)
        return None
    return folder


# --------------------------------------------------------------------------- per-term state

def _official_text(e: babelon.Entry, source_text: str | None, synonym: bool = False) -> dict:
    t = {"text": e.text, "source": "official", "status": e.status, "translator": e.translator,
         "source_text": source_text}
    if synonym:
        t["scope"] = e.scope
        t["type"] = e.type
    return t


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
            setattr(st, field, _official_text(e, e.source_text))
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
        st.official_syns = [_official_text(e, en["label"], synonym=True) for e in off_syns]
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


# --------------------------------------------------------------------------- inputs

def load_selected_terms(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

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


# --------------------------------------------------------------------------- the stage

def _batches(texts: list[str], max_segments: int, max_chars: int) -> list[list[str]]:
    out, cur, n = [], [], 0
    for t in texts:
        if cur and (len(cur) >= max_segments or n + len(t) > max_chars):
            out.append(cur)
            cur, n = [], 0
        cur.append(t)
        n += len(t)
    if cur:
        out.append(cur)
    return out


class MTScheduler:
    """Runs machine-translation batches ``(lang, backend, texts)`` on ``concurrency``
    threads in order, stopping new paid requests at ``max_characters``. ``run(on_result)``
    calls ``on_result(lang, backend, texts, results)`` in the calling thread as each batch
    finishes; afterwards ``sent`` (characters per language), ``budget_hit`` and ``error``
    (the first UserError of a backend; no new batch starts after it) tell what happened."""

    def __init__(self, work: list[tuple[str, Backend, list[str]]], concurrency: int, max_characters: int | None):
        self.work, self.concurrency, self.max_characters = work, concurrency, max_characters
        self.sent: collections.Counter = collections.Counter()
        self.paid_sent = 0
        self.budget_hit = False
        self.error: UserError | None = None

    def _submit_next(self, pool, pending: dict, it) -> bool:
        for lang, b, batch in it:
            n = sum(len(t) for t in batch)
            if b.paid and self.max_characters is not None and self.paid_sent + n > self.max_characters:
                if not self.budget_hit:
                    log.warning("translate.max_characters: budget of %d characters reached (%d sent); "
                                "stopping machine translation, the rest stays missing",
                                self.max_characters, self.paid_sent)
                self.budget_hit = True
                return False
            if b.paid:
                self.paid_sent += n
            pending[pool.submit(b.translate, batch, lang)] = (lang, b, batch)
            return True
        return False

    def run(self, on_result) -> None:
        total_chars = sum(len(t) for _, _, batch in self.work for t in batch)
        with tqdm(total=total_chars, desc="machine translation", unit="char", unit_scale=True,
                  disable=not self.work) as bar, cf.ThreadPoolExecutor(self.concurrency) as pool:
            pending: dict[cf.Future, tuple[str, Backend, list[str]]] = {}
            it = iter(self.work)
            stop = False
            for _ in range(self.concurrency):
                if not self._submit_next(pool, pending, it):
                    break
            try:
                while pending:
                    done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        lang, b, batch = pending.pop(fut)
                        try:
                            results = fut.result()
                        except UserError as exc:
                            self.error = self.error or exc
                            stop = True
                            continue
                        n = sum(len(t) for t in batch)
                        self.sent[lang] += n
                        bar.update(n)
                        on_result(lang, b, batch, results)
                        if not stop:
                            self._submit_next(pool, pending, it)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise


def run(params: TranslateParams, terms_path: Path, out_dir: Path, metrics_path: Path | None,
        backends: dict[str, Backend] | None = None, dry_run: bool = False,
        report_path: Path | None = None, downloads: Path | None = None) -> dict:
    """Translate into ``out_dir``; ``backends`` (name -> instance) replaces building them from
    params; counts go to ``report_path`` (default ``<metrics stem>.report.json``), the
    headline to ``metrics_path`` (None: neither); ``downloads``: for ``official: pinned``."""
    out_dir = Path(out_dir)
    terms = load_selected_terms(Path(terms_path))
    by_id = {t["id"]: t for t in terms}
    official_dir = resolve_official(params, downloads)
    official: dict[str, babelon.OfficialLanguage | None] = {}
    for lang in params.languages:
        official[lang] = (babelon.read_language(official_dir, lang, params.accepted_statuses)
                          if official_dir is not None else None)
        if official_dir is not None and official[lang] is None:
            log.info("no official file for %s in translate.official", lang)
    if dry_run:
        existing, corrupt, moved = {}, 0, 0
        if out_dir.is_dir():
            for p in out_dir.glob("HP_*.json"):
                hid = p.stem.replace("_", ":", 1)
                if hid in by_id:
                    try:
                        existing[hid] = schema.load(p)
                    except UserError:
                        pass
    else:
        existing, corrupt, moved = load_existing(out_dir, set(by_id))

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

    # Which backend serves which language.
    chosen: dict[str, Backend | None] = {}
    built: dict[str, Backend | None] = dict(backends or {})
    if "mt" in params.sources:
        for lang in params.languages:
            chosen[lang] = None
            if not jobs[lang]:
                continue
            for name in params.mt:
                if name not in built:
                    try:
                        built[name] = make_backend(name, params)
                    except BackendUnavailable as exc:
                        log.warning("translate.mt: %s unavailable (%s); its languages stay untranslated",
                                    name, exc)
                        built[name] = None
                b = built[name]
                if b is not None and b.supports(lang):
                    chosen[lang] = b
                    break

    if dry_run:
        return _dry_run(params, jobs, chosen)

    def doc_of(hpo_id: str) -> dict:
        en = by_id[hpo_id]
        prev = existing.get(hpo_id) or {}
        langs = {k: v for k, v in (prev.get("languages") or {}).items() if k not in params.languages}
        for lang, st in states[hpo_id].items():
            langs[lang] = st.entry(en)
        return {"schema_version": schema.SCHEMA_VERSION, "id": hpo_id,
                "en": {"label": en["label"], "definition": en["definition"], "synonyms": en["synonyms"]},
                "languages": langs}

    def write(hpo_id: str) -> None:
        path = schema.translation_path(out_dir, hpo_id)
        data = schema.dumps(doc_of(hpo_id)).encode("utf-8")
        try:
            if path.read_bytes() == data:
                return
        except FileNotFoundError:
            pass
        atomic_write_bytes(path, data)

    out_dir.mkdir(parents=True, exist_ok=True)
    for hpo_id in tqdm(by_id, desc="write official+cache", unit="file", disable=len(by_id) < 1000):
        write(hpo_id)

    work = []   # (lang, backend, batch)
    for lang in params.languages:
        b = chosen.get(lang)
        if b is None or not jobs[lang]:
            continue
        texts = list(jobs[lang])
        for batch in _batches(texts, min(params.batch_segments, b.max_segments),
                              min(params.batch_characters, b.max_characters)):
            work.append((lang, b, batch))

    def on_result(lang: str, b: Backend, batch: list[str], results) -> None:
        touched = set()
        for src, res in zip(batch, results):
            for hpo_id, slot in jobs[lang][src]:
                text = {"text": res.text, "source": f"mt:{b.name}", "status": "MACHINE",
                        "translator": b.translator, "source_text": src}
                if res.unknown:
                    text["unknown_words"] = res.unknown
                if res.text.strip():
                    apply_mt(states[hpo_id][lang], slot, text)
                    touched.add(hpo_id)
        for hpo_id in sorted(touched):
            write(hpo_id)

    scheduler = MTScheduler(work, params.concurrency, params.max_characters)
    scheduler.run(on_result)
    sent, budget_hit, error = scheduler.sent, scheduler.budget_hit, scheduler.error

    metrics = _metrics(params, terms, states, chosen, built, sent, corrupt, moved, stale, budget_hit,
                       official, official_dir)
    if metrics_path is not None:   # headline figures; every count in the report
        metrics_path = Path(metrics_path)
        write_json(report_path or metrics_path.with_name(metrics_path.stem + ".report.json"), metrics)
        write_json(metrics_path, headline(metrics))
    if error is not None:
        done_files = len(list(out_dir.glob("HP_*.json")))
        raise UserError(f"{error} ({done_files} files kept; rerun to continue)")
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


def unused_official_ids(off: babelon.OfficialLanguage | None, selected: set[str]) -> int:
    """Ids with an accepted official label, definition or synonym that are not in ``selected``."""
    if off is None:
        return 0
    return len((set(off.labels) | set(off.definitions) | set(off.synonyms)) - selected)


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

