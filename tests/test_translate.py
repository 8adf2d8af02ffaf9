"""Tests of the translate stage: Babelon reader, MT backends against local fake servers
(127.0.0.1 only), the stage's caching / interruption / budget behaviour, and an end-to-end
run on the shared official files."""
from __future__ import annotations

import csv
import hashlib
import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpo_embed.translation import babelon, official, translate
from hpo_embed.translation import schema
from hpo_embed.common import UserError
from hpo_embed.translation.mt import ApertiumBackend, BackendUnavailable, DeepLBackend, GoogleBackend
from hpo_embed.params import TranslateParams, parse_params
from hpo_embed.schemas import TERMS_SCHEMA

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- helpers

def make_terms(path: Path, terms: list[dict]) -> Path:
    rows = []
    for t in terms:
        rows.append({"id": t["id"], "label": t["label"], "definition": t.get("definition"),
                     "synonyms": [{"text": s, "scope": "EXACT", "type": None} for s in t.get("synonyms", [])],
                     "xrefs": [], "parents": [], "depth": 1, "is_obsolete": False, "replaced_by": None,
                     "branch": "HP:0000118", "branches": ["HP:0000118"], "selected": t.get("selected", True)})
    pq.write_table(pa.Table.from_pylist(rows, schema=TERMS_SCHEMA), path)
    return path


def synthetic_terms(n: int, defn: int = 0, start: int = 1000000) -> list[dict]:
    return [{"id": f"HP:{start + i:07d}", "label": f"Phenotype number {i}",
             "definition": (f"Definition {i} " + "x" * defn) if defn else None} for i in range(n)]


class FakeServer:
    """A threaded HTTP server on 127.0.0.1; ``respond(server, path, body) -> (status, dict)``
    decides each answer. Every request body is recorded."""

    def __init__(self, respond):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.respond = respond
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ctype = self.headers.get("Content-Type", "")
                if "json" in ctype:
                    body = json.loads(raw or b"{}")
                else:
                    body = urllib.parse.parse_qs(raw.decode())
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body})
                    n = len(outer.requests)
                status, payload = outer.respond(outer, self.path, body, n)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def texts(self) -> list[str]:
        return [t for r in self.requests for t in r["body"].get("contents", [])]


def google_ok(body) -> tuple[int, dict]:
    lang = body["targetLanguageCode"]
    return 200, {"translations": [{"translatedText": f"[{lang}] {t}"} for t in body["contents"]]}


def google_error(code: int) -> tuple[int, dict]:
    status = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}.get(code, "UNKNOWN")
    return code, {"error": {"code": code, "message": f"fake {code}", "status": status}}


@pytest.fixture
def google_server():
    servers = []

    def start(respond=lambda srv, path, body, n: google_ok(body)):
        s = FakeServer(respond)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def google_backend(server: FakeServer, **kw) -> GoogleBackend:
    from google.auth.credentials import AnonymousCredentials
    kw.setdefault("initial_backoff", 0.01)
    return GoogleBackend(project="test-project", endpoint=server.url, credentials=AnonymousCredentials(), **kw)


def params(**kw) -> TranslateParams:
    kw.setdefault("sources", ["cache", "mt"])
    kw.setdefault("mt", ["google"])
    kw.setdefault("languages", ["de"])
    return TranslateParams(**kw)


def labels_in(out_dir: Path, lang: str, source: str | None = None) -> dict[str, str]:
    out = {}
    for p in sorted(out_dir.glob("HP_*.json")):
        doc = schema.load(p)
        lab = doc["languages"].get(lang, {}).get("label")
        if lab and (source is None or lab["source"] == source):
            out[doc["id"]] = lab["text"]
    return out


@pytest.fixture
def fast_fsync(monkeypatch):
    """Thousands of atomic writes: skip the fsync (the rename still makes them atomic)."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


# --------------------------------------------------------------------------- params

def test_unknown_language_is_one_line_error_naming_the_parameter():
    with pytest.raises(UserError, match=r"translate\.languages: 'xx' is not one of"):
        parse_params({"translate": {"languages": ["de", "xx"]}})
    p = parse_params({"translate": {"languages": "de,fr", "max_characters": "1e6"}}).translate
    assert p.languages == ["de", "fr"] and p.max_characters == 1000000
    assert parse_params({}).translate.languages == ["de", "es", "fr"]


# --------------------------------------------------------------------------- babelon reader

def _official_rows(folder: Path, lang: str, accepted=("OFFICIAL", "CANDIDATE")) -> dict[str, set[str]]:
    """Independent count (csv.DictReader) of accepted label/definition rows: field -> ids."""
    out = {"label": set(), "definition": set()}
    path = folder / f"hp-{lang}.babelon.tsv"
    with open(path, encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            v = r["translation_value"].strip()
            if r["translation_status"] in accepted and v and v != "NA":
                out[{"rdfs:label": "label", "IAO:0000115": "definition"}[r["predicate_id"]]].add(r["subject_id"])
    return out


def test_babelon_reader_on_every_shared_file(shared_translations):
    expected = {  # labels, definitions, synonyms, rows, rejected, conflicting duplicates
        "de": (3488, 0, 745, 3902, 0, 0),
        "fr": (13985, 473, 11694, 26508, 2469, 5),
        "es": (19932, 0, 0, 19932, 0, 0),
        "ja": (17649, 0, 0, 17868, 219, 0),
        "it": (3488, 0, 21, 3509, 0, 0),
        "pt": (7213, 1, 0, 7214, 0, 0),
        "zh": (18988, 0, 0, 18988, 0, 0),
        "cs": (0, 0, 18703, 18811, 0, 0),
        "nl": (0, 0, 64, 20735, 20670, 0),
        "tr": (0, 0, 15465, 18706, 2705, 0),
    }
    files = sorted(p.name for p in shared_translations.glob("*.tsv"))
    seen = []
    for lang, exp in expected.items():
        o = babelon.read_language(shared_translations, lang, ["OFFICIAL", "CANDIDATE"])
        seen += o.files
        c = o.counts()
        assert (c["labels"], c["definitions"], c["synonyms"], c["rows"], c["rejected"], c["conflicts"]) == exp, lang
    assert sorted(seen) == files          # every shared file was read
    for lang in ("de", "fr", "es", "ja"):  # the reader agrees with a plain csv count
        o = babelon.read_language(shared_translations, lang, ["OFFICIAL", "CANDIDATE"])
        ref = _official_rows(shared_translations, lang)
        assert set(o.labels) == ref["label"] and set(o.definitions) == ref["definition"]
    # statuses are a parameter: German labels are mostly DeepL CANDIDATEs
    assert babelon.read_language(shared_translations, "de", ["OFFICIAL"]).counts()["labels"] == 587
    ja = babelon.read_language(shared_translations, "ja", ["OFFICIAL"])
    assert "HP:0000001" not in ja.labels                      # NA / NOT_TRANSLATED
    assert ja.labels["HP:0000057"].text == "巨大陰核"
    assert ja.labels["HP:0000057"].source_text == "Clitoromegaly"  # 'obsolete ' removed
    de = babelon.read_language(shared_translations, "de", ["OFFICIAL", "CANDIDATE"])
    assert [s.text for s in de.synonyms["HP:0000020"]] == ["Harninkontinenz", "Verlust der Kontrolle über die Blase"]
    assert {s.type for s in de.synonyms["HP:0000020"]} == {"layperson"}
    assert de.labels["HP:0010704"].translator == "DeepL" and de.labels["HP:0010704"].status == "CANDIDATE"
    cs = babelon.read_language(shared_translations, "cs", ["OFFICIAL"])   # status in 'comment'
    assert cs.counts()["synonyms"] == 14698


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


HEAD = "subject_id\tpredicate_id\tsource_value\ttranslation_value\ttranslation_status\ttranslator"


def test_babelon_malformed_files(tmp_path):
    acc = ["OFFICIAL", "CANDIDATE"]
    _write(tmp_path / "a" / "hp-de.babelon.tsv", ["id\tpredicate_id\ttranslation_value\ttranslation_status",
                                                  "HP:0000001\trdfs:label\tx\tOFFICIAL"])
    with pytest.raises(UserError, match=r"hp-de\.babelon\.tsv:1: missing column 'subject_id'"):
        babelon.read_language(tmp_path / "a", "de", acc)
    _write(tmp_path / "b" / "hp-de.babelon.tsv", [HEAD, "HP:0000001\trdfs:label\tAll\tAlle\tOFFICIAL\t",
                                                  "\trdfs:label\tX\tY\tOFFICIAL\t"])
    with pytest.raises(UserError, match=r"hp-de\.babelon\.tsv:3: empty subject_id"):
        babelon.read_language(tmp_path / "b", "de", acc)
    _write(tmp_path / "c" / "hp-de.babelon.tsv", [HEAD, "HP:12\trdfs:label\tX\tY\tOFFICIAL\t"])
    with pytest.raises(UserError, match=r"hp-de\.babelon\.tsv:2: subject_id 'HP:12' is not an HP id"):
        babelon.read_language(tmp_path / "c", "de", acc)
    _write(tmp_path / "d" / "hp-de.babelon.tsv", [HEAD, "HP:0000001\trdfs:label\tX\tY\tOFFICIAL\t\textra"])
    with pytest.raises(UserError, match=r"hp-de\.babelon\.tsv:2: 7 fields, header has 6"):
        babelon.read_language(tmp_path / "d", "de", acc)


def test_babelon_duplicates_statuses_and_template(tmp_path):
    folder = tmp_path / "o"
    _write(folder / "hp-de.babelon.tsv", [
        HEAD,
        "HP:0000001\trdfs:label\tAll\tAlles offiziell\tOFFICIAL\torcid:1",
        "HP:0000001\trdfs:label\tAll\tAlles Kandidat\tCANDIDATE\tDeepL",       # worse status, later: loses
        "HP:0000002\trdfs:label\tHeight\tHöhe 1\tCANDIDATE\t",
        "HP:0000002\trdfs:label\tHeight\tHöhe 2\tCANDIDATE\t",                 # equal status: last wins
        "HP:0000003\trdfs:label\tX\tKandidat\tCANDIDATE\t",
        "HP:0000003\trdfs:label\tX\tOffiziell später\tOFFICIAL\t",             # better status, later: wins
        "HP:0000004\trdfs:label\tX\tNA\tOFFICIAL\t",                           # NA never accepted
        "HP:0000005\trdfs:label\tX\tNicht\tNOT_TRANSLATED\t",                  # never accepted
        "HP:0000006\trdfs:label\tobsolete Old\tobsolete Alt\tOFFICIAL\t",      # prefix removed
        "HP:0000006\tIAO:0000115\tA definition.\tEine Definition.\tOFFICIAL\t",
    ])
    _write(folder / "hp-de.synonyms.tsv", [
        "subject_id\ttranslation_value\tsynonym_type\tcomment",
        "ID\tAL oboInOwl:hasRelatedSynonym@de SPLIT=|\t>AI oboInOwl:hasSynonymType\t",
        "HP:0000001\tEins|Zwei| |Eins\thttp://purl.obolibrary.org/obo/hp#layperson\tOFFICIAL",
        "HP:0000002\tNein\t\tNOT_TRANSLATED",
        "HP:0000003\tKommentar\t\tsome free text",
    ])
    o = babelon.read_language(folder, "de", ["OFFICIAL", "CANDIDATE"])
    assert o.labels["HP:0000001"].text == "Alles offiziell"
    assert o.labels["HP:0000002"].text == "Höhe 2"
    assert o.labels["HP:0000003"].text == "Offiziell später"
    assert "HP:0000004" not in o.labels and "HP:0000005" not in o.labels
    assert (o.labels["HP:0000006"].text, o.labels["HP:0000006"].source_text) == ("Alt", "Old")
    assert o.definitions["HP:0000006"].text == "Eine Definition."
    assert o.conflicts == 3
    syn = o.synonyms["HP:0000001"]
    assert [(s.text, s.scope, s.type) for s in syn] == [("Eins", "RELATED", "layperson"), ("Zwei", "RELATED", "layperson")]
    assert "HP:0000002" not in o.synonyms
    # no status column and a free-text comment: a curated template row, counted OFFICIAL
    assert [(s.text, s.status) for s in o.synonyms["HP:0000003"]] == [("Kommentar", "OFFICIAL")]
    only_official = babelon.read_language(folder, "de", ["OFFICIAL"])
    assert "HP:0000002" not in only_official.labels
    assert only_official.labels["HP:0000003"].text == "Offiziell später"


# --------------------------------------------------------------------------- google backend

def test_google_batching_limits_respected(tmp_path, google_server, fast_fsync):
    srv = google_server()
    # 2,100 short labels (segment limit) + 40 definitions of ~1,500 characters (size limit)
    terms = synthetic_terms(2100) + [{"id": f"HP:{2000000 + i:07d}", "label": f"Long {i}",
                                      "definition": f"D{i} " + "y" * 1500} for i in range(40)]
    tp = make_terms(tmp_path / "terms.parquet", terms)
    m = translate.run(params(mt_fields=["label", "definition"]), terms_path=tp, out_dir=tmp_path / "out",
                      metrics_path=tmp_path / "m.json", backends={"google": google_backend(srv)})
    sizes = [len(r["body"]["contents"]) for r in srv.requests]
    chars = [sum(len(t) for t in r["body"]["contents"]) for r in srv.requests]
    assert max(sizes) <= 1024 and max(chars) <= 30000
    assert sizes.count(1024) == 2                     # full batches by segment count
    assert any(c > 30000 - 1510 and n < 1024 for c, n in zip(chars, sizes))   # a batch cut by size
    sent = srv.texts()
    assert len(sent) == len(set(sent)) == 2140 + 40   # every text exactly once
    assert all(r["path"].split("?")[0] == "/v3/projects/test-project/locations/global:translateText"
               for r in srv.requests)
    body = srv.requests[0]["body"]
    assert (body["sourceLanguageCode"], body["targetLanguageCode"], body["mimeType"]) == ("en", "de", "text/plain")
    lang = m["languages"]["de"]
    assert lang["labels"] == {"official": 0, "cache": 0, "mt": 2140, "missing": 0, "covered": 2140, "coverage": 1.0}
    assert lang["definitions"]["mt"] == 40 and lang["requests"] == len(srv.requests) and lang["retries"] == 0
    assert lang["characters_sent"] == sum(chars) == json.loads((tmp_path / "m.json").read_text())["characters_sent"]
    doc = schema.load(tmp_path / "out" / "HP_2000003.json")
    assert doc["languages"]["de"]["definition"] == {
        "text": "[de] D3 " + "y" * 1500, "source": "mt:google", "status": "MACHINE",
        "translator": "Google Cloud Translation v3", "source_text": "D3 " + "y" * 1500}


def test_google_429_then_success_is_retried(tmp_path, google_server):
    def respond(srv, path, body, n):
        return google_error(429) if n == 1 else google_ok(body)
    srv = google_server(respond)
    tp = make_terms(tmp_path / "terms.parquet", synthetic_terms(5))
    m = translate.run(params(mt_fields=["label"]), terms_path=tp, out_dir=tmp_path / "out", metrics_path=None,
                      backends={"google": google_backend(srv)})
    assert len(srv.requests) == 2 and srv.requests[0]["body"] == srv.requests[1]["body"]
    assert (m["languages"]["de"]["requests"], m["languages"]["de"]["retries"]) == (1, 1)
    assert labels_in(tmp_path / "out", "de")["HP:1000004"] == "[de] Phenotype number 4"


def test_google_500_storm_clear_error_and_finished_files_kept(tmp_path, google_server, capsys):
    def respond(srv, path, body, n):
        return google_ok(body) if n <= 2 else google_error(500)
    srv = google_server(respond)
    tp = make_terms(tmp_path / "terms.parquet", synthetic_terms(25))
    b = google_backend(srv, retry_deadline=0.5)
    p = params(mt_fields=["label"], batch_segments=5, concurrency=1)
    with pytest.raises(UserError, match=r"google: gave up after retrying for 0\.5 s \(translate\.retry_deadline\)"
                                        r".*500.*files kept; rerun to continue"):
        translate.run(p, terms_path=tp, out_dir=tmp_path / "out", metrics_path=None, backends={"google": b})
    done = labels_in(tmp_path / "out", "de", "mt:google")
    assert sorted(done) == [f"HP:{1000000 + i:07d}" for i in range(10)]   # the 2 finished batches
    assert len(list((tmp_path / "out").glob("HP_*.json"))) == 25          # the rest written, label missing
    # the error is one line through run_stage
    from hpo_embed.common import run_stage

    def main():
        translate.run(p, terms_path=tp, out_dir=tmp_path / "out", metrics_path=None, backends={"google": b})
    with pytest.raises(SystemExit) as exc:
        run_stage(main)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: translate.mt: google: gave up") and "Traceback" not in err


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from google.auth.credentials import AnonymousCredentials
    from hpo_embed.translation.mt import GoogleBackend
    from hpo_embed.params import TranslateParams
    from hpo_embed.translation.translate import run
    url, terms, out = sys.argv[1:4]
    p = TranslateParams(languages=["de"], sources=["cache", "mt"], mt=["google"], mt_fields=["label"],
                        batch_segments=10, concurrency=1)
    b = GoogleBackend(project="p", endpoint=url, credentials=AnonymousCredentials())
    run(p, terms_path=Path(terms), out_dir=Path(out), metrics_path=None, backends={"google": b})
""")


def test_kill_mid_run_then_rerun_repeats_no_finished_request(tmp_path, google_server):
    tp = make_terms(tmp_path / "terms.parquet", synthetic_terms(60))
    out = tmp_path / "out"
    state = {"proc": None}
    killed = threading.Event()

    def respond(srv, path, body, n):
        if n == 4:                        # three batches answered and stored: kill the run hard
            state["proc"].send_signal(signal.SIGKILL)
            killed.set()
            time.sleep(1)
        return google_ok(body)
    srv = google_server(respond)
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    state["proc"] = subprocess.Popen([sys.executable, str(script), srv.url, str(tp), str(out)], cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO)},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, stderr = state["proc"].communicate(timeout=120)
    assert killed.is_set(), stderr.decode()[-2000:]
    assert killed.is_set() and state["proc"].returncode == -signal.SIGKILL
    first = [t for r in srv.requests[:3] for t in r["body"]["contents"]]
    assert len(first) == 30 and len(labels_in(out, "de", "mt:google")) == 30

    srv2 = google_server()
    m = translate.run(params(mt_fields=["label"], batch_segments=10), terms_path=tp, out_dir=out,
                      metrics_path=None, backends={"google": google_backend(srv2)})
    assert not set(first) & set(srv2.texts())                    # nothing finished is sent again
    assert len(srv2.texts()) == 30
    assert (m["languages"]["de"]["labels"]["cache"], m["languages"]["de"]["labels"]["mt"]) == (30, 30)
    srv3 = google_server()                                       # a third run sends nothing at all
    translate.run(params(mt_fields=["label"]), terms_path=tp, out_dir=out, metrics_path=None,
                  backends={"google": google_backend(srv3)})
    assert srv3.requests == []


# --------------------------------------------------------------------------- stage behaviour

def test_cache_stale_source_new_language_corrupt_file_and_unselected(tmp_path, google_server, caplog):
    srv = google_server()
    terms = [{"id": "HP:0000001", "label": "Arthritis", "definition": "Inflammation of a joint.",
              "synonyms": ["Joint inflammation", "Arthritides"]},
             {"id": "HP:0000002", "label": "Tremor", "definition": None},
             {"id": "HP:0000003", "label": "Fever"}]
    tp = make_terms(tmp_path / "terms.parquet", terms)
    out = tmp_path / "out"
    b = {"google": google_backend(srv)}
    translate.run(params(), terms_path=tp, out_dir=out, metrics_path=None, backends=b)
    assert sorted(srv.texts()) == sorted(["Arthritis", "Inflammation of a joint.", "Joint inflammation",
                                          "Arthritides", "Tremor", "Fever"])
    doc = schema.load(out / "HP_0000001.json")
    assert [(s["text"], s["source_text"], s["scope"]) for s in doc["languages"]["de"]["synonyms"]] == [
        ("[de] Joint inflammation", "Joint inflammation", "EXACT"), ("[de] Arthritides", "Arthritides", "EXACT")]
    assert schema.load(out / "HP_0000002.json")["languages"]["de"]["definition"] is None

    # English label changed + a synonym dropped + one file corrupt + a new language + one term deselected
    terms[0]["label"] = "Arthritis (joint)"
    terms[0]["synonyms"] = ["Joint inflammation"]
    terms[2]["selected"] = False
    make_terms(tp, terms)
    (out / "HP_0000002.json").write_text('{"schema_version": 1, "id": "HP:0000002", "en": {', encoding="utf-8")
    srv.requests.clear()
    caplog.set_level(logging.WARNING)
    m = translate.run(params(languages=["de", "fr"]), terms_path=tp, out_dir=out, metrics_path=None, backends=b)
    de_sent = [t for r in srv.requests if r["body"]["targetLanguageCode"] == "de" for t in r["body"]["contents"]]
    fr_sent = [t for r in srv.requests if r["body"]["targetLanguageCode"] == "fr" for t in r["body"]["contents"]]
    assert sorted(de_sent) == ["Arthritis (joint)", "Tremor"]     # stale label + rebuilt corrupt file only
    assert sorted(fr_sent) == ["Arthritis (joint)", "Inflammation of a joint.", "Joint inflammation", "Tremor"]
    corrupt_lines = [r.getMessage() for r in caplog.records if "HP_0000002.json" in r.getMessage()]
    assert len(corrupt_lines) == 1 and "corrupt JSON" in corrupt_lines[0] and "rebuilding" in corrupt_lines[0]
    assert m["corrupt_files_rebuilt"] == 1 and m["stale_mt_retranslated"] == 2 and m["files_moved_unselected"] == 1
    assert sorted(p.name for p in out.glob("*.json")) == ["HP_0000001.json", "HP_0000002.json"]
    assert (out / ".unselected" / "HP_0000003.json").is_file()
    de = m["languages"]["de"]
    assert de["labels"] == {"official": 0, "cache": 0, "mt": 2, "missing": 0, "covered": 2, "coverage": 1.0}
    assert de["definitions"]["cache"] == 1 and de["synonyms"]["cache"] == 1
    doc = schema.load(out / "HP_0000001.json")
    assert doc["languages"]["de"]["label"]["text"] == "[de] Arthritis (joint)"
    assert [s["text"] for s in doc["languages"]["de"]["synonyms"]] == ["[de] Joint inflammation"]

    # the term comes back: its stored translations are reused, nothing is sent
    terms[2]["selected"] = True
    make_terms(tp, terms)
    srv.requests.clear()
    m = translate.run(params(languages=["de", "fr"]), terms_path=tp, out_dir=out, metrics_path=None, backends=b)
    assert sorted(srv.texts()) == ["Fever"] and m["languages"]["de"]["labels"]["cache"] == 3   # only fr was new


def test_budget_stops_cleanly_and_dry_run_sends_nothing(tmp_path, google_server, capsys):
    srv = google_server()
    tp = make_terms(tmp_path / "terms.parquet", synthetic_terms(30))   # labels of 18-19 characters
    total = sum(len(t["label"]) for t in synthetic_terms(30))
    p = params(mt_fields=["label"], batch_segments=4, max_characters=100, languages=["de", "fr"])
    m = translate.run(p, terms_path=tmp_path / "terms.parquet", out_dir=tmp_path / "dry", metrics_path=None,
                      backends={"google": google_backend(srv)}, dry_run=True)
    printed = capsys.readouterr().out
    assert srv.requests == [] and not (tmp_path / "dry").exists()
    assert m["languages"]["de"] == {"texts": 30, "characters": total, "backend": "google",
                                    "cost_usd": round(total / 1e6 * 20.0, 2)}
    assert f"{total:,}" in printed and "total cost at list price" in printed

    m = translate.run(p, terms_path=tp, out_dir=tmp_path / "out", metrics_path=None,
                      backends={"google": google_backend(srv)})
    sent = sum(len(t) for t in srv.texts())
    assert sent <= 100 and sent > 100 - 4 * 19                        # stopped before the batch that would exceed
    assert m["budget_exhausted"] is True and m["characters_sent"] == sent
    de = m["languages"]["de"]["labels"]
    assert de["mt"] == len(srv.texts()) and de["missing"] == 30 - de["mt"]
    assert m["languages"]["fr"]["labels"]["mt"] == 0


def test_no_official_files_no_mt_completes_with_one_warning(tmp_path, caplog):
    tp = make_terms(tmp_path / "terms.parquet", synthetic_terms(4))
    caplog.set_level(logging.WARNING)
    p = TranslateParams(official=str(tmp_path / "absent"), mt=[])
    m = translate.run(p, terms_path=tp, out_dir=tmp_path / "out", metrics_path=tmp_path / "m.json")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "make fetch-translations" in warnings[0] and "translate.official" in warnings[0]
    for lang in ("de", "es", "fr"):
        assert m["languages"][lang]["labels"] == {"official": 0, "cache": 0, "mt": 0, "missing": 4,
                                                  "covered": 0, "coverage": 0.0}
    assert len(list((tmp_path / "out").glob("HP_*.json"))) == 4
    assert json.loads((tmp_path / "m.report.json").read_text())["official_available"] is False   # full counts


def test_pinned_download_with_checksums_from_local_server(tmp_path, monkeypatch):
    src = tmp_path / "srv" / "babelon"
    _write(src / "hp-de.babelon.tsv", [HEAD, "HP:0000001\trdfs:label\tAll\tAlle\tOFFICIAL\t"])
    good = hashlib.sha256((src / "hp-de.babelon.tsv").read_bytes()).hexdigest()
    hits = []

    class H(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path / "srv"), **kw)

        def log_message(self, *a):
            hits.append(self.path)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(official, "PINNED_BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}/babelon/")
        monkeypatch.setattr(official, "PINNED_FILES", {"hp-de.babelon.tsv": good})
        monkeypatch.setattr(official, "PINNED_FOLDER", "pinned")
        tp = make_terms(tmp_path / "terms.parquet", [{"id": "HP:0000001", "label": "All"}])
        p = TranslateParams(official="pinned", languages=["de"], mt=[])
        m = translate.run(p, terms_path=tp, out_dir=tmp_path / "out", metrics_path=None, downloads=tmp_path / "external")
        assert m["languages"]["de"]["labels"]["official"] == 1 and len(hits) == 1
        translate.run(p, terms_path=tp, out_dir=tmp_path / "out", metrics_path=None, downloads=tmp_path / "external")
        assert len(hits) == 1                                       # downloaded once
        (tmp_path / "external" / "pinned" / "hp-de.babelon.tsv").write_text("tampered")
        monkeypatch.setattr(official, "PINNED_FILES", {"hp-de.babelon.tsv": "0" * 64})
        with pytest.raises(UserError, match=r"translate\.official: .*hp-de\.babelon\.tsv has sha256 "
                                            + good + ", expected 0{64}"):
            translate.run(p, terms_path=tp, out_dir=tmp_path / "out", metrics_path=None, downloads=tmp_path / "external")
        assert len(hits) == 2
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_paid_backend_without_credentials_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("DEEPL_AUTH_KEY", raising=False)
    with pytest.raises(BackendUnavailable, match="GOOGLE_CLOUD_PROJECT"):
        GoogleBackend()
    with pytest.raises(BackendUnavailable, match="DEEPL_AUTH_KEY"):
        DeepLBackend()
    tp = make_terms(tmp_path / "terms.parquet", synthetic_terms(2))
    caplog.set_level(logging.WARNING)
    m = translate.run(TranslateParams(official=str(tmp_path / "none"), mt=["deepl"], languages=["de"]),
                      terms_path=tp, out_dir=tmp_path / "out", metrics_path=None)
    assert any("deepl unavailable" in r.getMessage() for r in caplog.records)
    assert m["languages"]["de"]["labels"]["missing"] == 2


# --------------------------------------------------------------------------- deepl, apertium

def test_deepl_backend_against_local_fake_server(tmp_path):
    def respond(srv, path, body, n):
        texts = body["text"] if isinstance(body.get("text"), list) else body.get("text", [])
        target = body["target_lang"][0] if isinstance(body["target_lang"], list) else body["target_lang"]
        return 200, {"translations": [{"detected_source_language": "EN", "text": f"<{target}> {t}",
                                      "billed_characters": len(t)} for t in texts]}
    srv = FakeServer(respond)
    try:
        b = DeepLBackend(auth_key="fake-key:fx", server_url=srv.url)
        tp = make_terms(tmp_path / "terms.parquet", synthetic_terms(120))
        m = translate.run(params(mt=["deepl"], mt_fields=["label"], languages=["pt"]), terms_path=tp,
                          out_dir=tmp_path / "out", metrics_path=None, backends={"deepl": b})
    finally:
        srv.close()
    assert [r["path"].split("?")[0] for r in srv.requests] == ["/v2/translate"] * 3         # DeepL: <= 50 texts a request
    assert labels_in(tmp_path / "out", "pt")["HP:1000007"] == "<PT-PT> Phenotype number 7"
    assert m["languages"]["pt"]["labels"]["mt"] == 120 and m["languages"]["pt"]["requests"] == 3


def test_apertium_english_to_spanish(tmp_path):
    try:
        b = ApertiumBackend()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    texts = ["Short stature", "Multicystic kidney dysplasia", "Inflammation of a joint.", "Fever", "Headache"]
    res = b.translate(texts, "es")
    assert [r.text for r in res][0] == "Estatura corta" and res[3].text == "Fiebre"
    assert res[1].unknown == ["Multicystic"] and "*" not in res[1].text and "riñón" in res[1].text
    assert res[2].text.endswith(".") and res[0].unknown == []
    assert not b.supports("de")
    tp = make_terms(tmp_path / "terms.parquet", [{"id": "HP:0004322", "label": "Short stature",
                                                  "synonyms": ["Multicystic kidney dysplasia"]}])
    m = translate.run(TranslateParams(official=str(tmp_path / "none"), languages=["de", "es"]), terms_path=tp,
                      out_dir=tmp_path / "out", metrics_path=None)
    doc = schema.load(tmp_path / "out" / "HP_0004322.json")
    assert doc["languages"]["es"]["label"]["source"] == "mt:apertium"
    assert doc["languages"]["es"]["synonyms"][0]["unknown_words"] == ["Multicystic"]
    assert m["languages"]["es"]["mt_backend"] == "apertium" and m["languages"]["de"]["mt_backend"] is None
    assert m["languages"]["de"]["labels"]["missing"] == 1


# --------------------------------------------------------------------------- end to end, shared data

def test_end_to_end_shared_official_files(tmp_path, hpo_terms, shared_translations, fast_fsync):
    terms_path = hpo_terms[0]
    selected = set(pq.read_table(terms_path, columns=["id", "selected"]).to_pandas().query("selected")["id"])
    p = TranslateParams(official=str(shared_translations), languages=["de", "fr", "es"], mt=[])
    out = tmp_path / "out"
    m = translate.run(p, terms_path=terms_path, out_dir=out, metrics_path=tmp_path / "m.json")
    files = sorted(out.glob("HP_*.json"))
    assert len(files) == len(selected) == m["terms"]
    got = {lang: {"label": 0, "definition": 0} for lang in ("de", "fr", "es")}
    for f in files:
        doc = json.loads(f.read_text(encoding="utf-8"))
        for lang in got:
            for field in ("label", "definition"):
                got[lang][field] += doc["languages"][lang][field] is not None
    for lang in ("de", "fr", "es"):
        ref = _official_rows(shared_translations, lang)
        assert got[lang]["label"] == len(ref["label"] & selected) == m["languages"][lang]["labels"]["official"]
        assert got[lang]["definition"] == len(ref["definition"] & selected)
        assert m["languages"][lang]["characters_sent"] == 0
        # rows of ids that are no selected term of this hp.obo are counted, not silently dropped
        off = babelon.read_language(shared_translations, lang, p.accepted_statuses)
        unused = (set(off.labels) | set(off.definitions) | set(off.synonyms)) - selected
        assert m["languages"][lang]["official_ids_unused"] == len(unused)
    assert m["languages"]["de"]["official_ids_unused"] > 0   # the shared files hold ids outside HP:0000118
    assert schema.load(out / "HP_0001369.json")["languages"]["fr"]["label"]["text"] == "Arthrite"
