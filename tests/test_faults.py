"""The reliability promise, one test per fault (docs/reliability.md lists them).

A user or environment mistake (bad params, a broken input file, no network, a read-only or
full disk, a killed run, a second run at once) ends with one line naming the file, line or
key, exit status 2, and never corrupts a finished output; a bug keeps its traceback.
Everything here is small and in-process (tiny models from conftest), no network.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import benchmark_paths
from hpo_embed.benchmark import inputs as bi, run as bm
from hpo_embed import embedding as emb
from hpo_embed.pairs import external_sets as xs
from hpo_embed.retrieval import metrics as rm
from hpo_embed.translation import translate
from hpo_embed.common import UserError, atomic_write_text, run_stage
from hpo_embed.params import BenchmarkParams, TranslateParams, load_params, parse_params

REPO = Path(__file__).resolve().parent.parent
DVC = Path(sys.executable).with_name("dvc")


def one_line_error(capsys, fn) -> str:
    """Run ``fn`` as a stage entry point; assert exit 2 and one ``error:`` line, no traceback."""
    with pytest.raises(SystemExit) as exc:
        run_stage(fn)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]   # (progress bars aside)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# =========================================================================== 1. benchmark: n < 2

def test_paired_test_with_one_pair_is_not_computed_not_a_crash():
    res = rm.paired_diff([0.5], [1.0], 1000, 0)
    assert res["diff"] == -0.5 and res["diff_ci_low"] == res["diff_ci_high"] == -0.5
    assert np.isnan(res["p_value"])
    assert np.isnan(rm.paired_diff([1.0], [1.0], 1000, 0)["p_value"])   # n = 1 with no difference too
    two = rm.paired_diff([0.5, 1.0], [1.0, 0.25], 1000, 0)     # n = 2 is computed
    assert two["diff"] == pytest.approx(0.125) and 0 < two["p_value"] <= 1


TERMS = [  # id, label, parent
    ("HP:0000001", "All", None), ("HP:0000118", "Phenotypic abnormality", "HP:0000001"),
    ("HP:0000010", "Arthritis", "HP:0000118"), ("HP:0000011", "Seizure", "HP:0000118"),
    ("HP:0000012", "Tremor", "HP:0000011"), ("HP:0000013", "Fever", "HP:0000118"),
    ("HP:0000014", "Headache", "HP:0000118"), ("HP:0000015", "Microcephaly", "HP:0000118"),
]
QUERIES = [("Gelenkentzündung", "HP:0000010"), ("Krampfanfall", "HP:0000011"), ("Fieber", "HP:0000013")]


def bench_inputs(root: Path) -> bi.Paths:
    from hpo_embed.schemas import EDGES_SCHEMA, TERMS_SCHEMA

    rows = [{"id": t, "label": label, "definition": None, "synonyms": [], "xrefs": [],
             "parents": [p] if p else [], "depth": 0, "is_obsolete": False, "replaced_by": None,
             "branch": None, "branches": [], "selected": t != "HP:0000001"} for t, label, p in TERMS]
    (root / "hpo").mkdir(parents=True)
    (root / "pairs").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=TERMS_SCHEMA), root / "hpo" / "terms.parquet")
    pq.write_table(pa.Table.from_pylist([{"child": t, "parent": p} for t, _, p in TERMS if p],
                                        schema=EDGES_SCHEMA), root / "hpo" / "edges.parquet")
    pd.DataFrame([{"text": q, "hpo_id": h, "lang": "de", "split": "test"} for q, h in QUERIES]
                 ).to_parquet(root / "pairs" / "queries.parquet")
    return benchmark_paths(root)


@pytest.fixture(scope="module")
def finetuned_dir(tmp_path_factory):
    from conftest import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp("ft") / "finetuned", seed=1)


def test_benchmark_external_set_with_one_usable_case_gets_metrics_and_no_p(tmp_path, tiny_model_dir,
                                                                          finetuned_dir, caplog):
    paths = bench_inputs(tmp_path)
    shutil.copytree(finetuned_dir, paths.finetuned)
    ext = tmp_path / "one_v1.json"
    ext.write_text(json.dumps([{"text": "Fieber", "expected_hpo_ids": ["HP:0000013"]},
                               {"text": "unbekannt", "expected_hpo_ids": ["HP:0009999"]}]))
    bp = BenchmarkParams(models=["base", "finetuned"], external_sets=[str(ext)], bootstrap_resamples=100,
                         batch_size=8)
    caplog.set_level(logging.INFO)
    out = bm.run(bp, str(tiny_model_dir), paths)
    m, report = out["metrics"], out["report"]
    assert report["phentrieve.one_v1.n_cases"] == 2 and report["phentrieve.one_v1.n_skipped_cases"] == 1
    for model in ("base", "finetuned"):
        assert 0 < m[f"phentrieve.one_v1.{model}.mrr"] <= 1
    assert m["phentrieve.one_v1.finetuned_vs_base.p_value"] is None          # null in the JSON
    assert json.loads(paths.metrics.read_text())["phentrieve.one_v1.finetuned_vs_base.p_value"] is None
    assert 0 < report["single.heldout.de.finetuned_vs_base.p_value"] <= 1     # n = 3 is computed
    assert any("phentrieve.one_v1" in r.getMessage() and "p: not computed (n < 2)" in r.getMessage()
               for r in caplog.records)


# =========================================================================== 9. empty external set

@pytest.mark.parametrize("cases, message", [
    ([], r"no cases \(an empty list\)"),
    ([{"text": "x", "expected_hpo_ids": ["HP:0009999"]}], r"none of its 1 cases has an expected id in the corpus"),
])
def test_empty_or_all_skipped_external_set_is_one_line_error(tmp_path, capsys, cases, message):
    f = tmp_path / "empty.json"
    f.write_text(json.dumps(cases))
    with pytest.raises(UserError, match=message):
        xs.load_external_set(f, {"HP:0000013"}, {})
    line = one_line_error(capsys, lambda: xs.load_external_set(f, {"HP:0000013"}, {}))
    assert line.startswith(f"error: {f}: ")


# =========================================================================== 10. truncated cache

@pytest.mark.parametrize("which", ["cache", "part"])
def test_truncated_embedding_cache_is_encoded_again(tmp_path, tiny_model_dir, monkeypatch, caplog, which):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    texts = [f"text number {i}" for i in range(25)]
    cache = tmp_path / "cache" / "m.npy"
    ref = emb.encode_cached(lambda: model, texts, cache, 8, "t")
    if which == "cache":
        target = cache
    else:   # a chunk file of an interrupted run, cut short
        cache.unlink()
        monkeypatch.setattr(emb, "CHUNK", 10)
        parts = cache.with_name("m.npy.parts")
        parts.mkdir()
        target = parts / "00000.npy"
        emb.save_npy(target, ref[:10])
    target.write_bytes(target.read_bytes()[:-37])
    caplog.set_level(logging.WARNING)
    out = emb.encode_cached(lambda: model, texts, cache, 8, "t")
    assert np.allclose(out, ref, atol=1e-6)
    assert any("unreadable embedding cache" in r.getMessage() for r in caplog.records)
    assert np.load(cache).shape == (25, ref.shape[1])


# =========================================================================== 2 + 8. parse_hpo

MINI_OBO = """format-version: 1.2
data-version: hp/releases/test

[Term]
id: HP:0000001
name: All

[Term]
id: HP:0000118
name: Phenotypic abnormality
is_a: HP:0000001 ! All

[Term]
id: HP:0000152
name: Abnormality of head or neck
is_a: HP:0000118 ! Phenotypic abnormality

[Term]
id: HP:0000252
name: Microcephaly
is_a: HP:0000152 ! Abnormality of head or neck

[Term]
id: HP:0000253
name: Progressive microcephaly
is_a: HP:0000252 ! Microcephaly
"""


def parse(tmp_path: Path, text: str):
    from hpo_embed.params import HpoParams
    from hpo_embed.ontology.tables import run
    obo = tmp_path / "hp.obo"
    obo.write_text(text, encoding="utf-8")
    return obo, lambda: run(HpoParams(source=str(obo)), out_dir=tmp_path / "out",
                            metrics_path=tmp_path / "out" / "hpo.json")


def test_mini_obo_parses(tmp_path):
    _, go = parse(tmp_path, MINI_OBO)
    assert go()["terms"]["selected"] == 4


def test_cyclic_is_a_is_rejected_naming_the_cycle(tmp_path, capsys):
    # HP:0000152 is_a its own descendant HP:0000253 (line 16 of the file)
    text = MINI_OBO.replace("is_a: HP:0000118 ! Phenotypic abnormality\n\n[Term]\nid: HP:0000252",
                            "is_a: HP:0000118 ! Phenotypic abnormality\nis_a: HP:0000253 ! cycle\n\n"
                            "[Term]\nid: HP:0000252")
    obo, go = parse(tmp_path, text)
    t0 = time.monotonic()
    line = one_line_error(capsys, go)
    assert time.monotonic() - t0 < 10
    assert line == (f"error: {obo}:17: is_a cycle: HP:0000152 (line 17) -> HP:0000253 (line 27) -> "
                    f"HP:0000252 (line 22) -> HP:0000152")
    assert not (tmp_path / "out" / "terms.parquet").exists()


def test_is_a_to_a_missing_id_names_the_referring_term_and_line(tmp_path, capsys):
    obo, go = parse(tmp_path, MINI_OBO.replace("is_a: HP:0000252 ! Microcephaly", "is_a: HP:9999999 ! gone"))
    assert one_line_error(capsys, go) == (f"error: {obo}:26: term HP:0000253 has is_a HP:9999999, "
                                          "which is not a term of this file")


_LAST = MINI_OBO.rindex("id: HP:0000253")


@pytest.mark.parametrize("text, stanza_line", [
    (MINI_OBO[:MINI_OBO.rindex("name: Microcephaly")], 18),     # ends after an id: no name
    (MINI_OBO[:_LAST], 23),                                        # ends after the [Term] header
    (MINI_OBO[:_LAST + len("id: HP:00002")], 23),                  # ends inside the id value
    (MINI_OBO[:_LAST + 1], 23),                                    # ends mid-line, inside the tag
])
def test_truncated_file_is_reported_as_truncated(tmp_path, capsys, text, stanza_line):
    obo, go = parse(tmp_path, text)
    line = one_line_error(capsys, go)
    assert line.startswith(f"error: {obo}:{stanza_line}: truncated stanza at line {stanza_line}"), line


def test_term_without_name_names_its_line(tmp_path, capsys):
    obo, go = parse(tmp_path, MINI_OBO.replace("name: Microcephaly\n", ""))
    assert one_line_error(capsys, go) == f"error: {obo}:18: [Term] HP:0000252 has no name"


# =========================================================================== 3 + 11. Google MT

def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_google_without_network_is_retried_then_one_line_and_metrics_kept(tmp_path, capsys):
    from google.auth.credentials import AnonymousCredentials
    from hpo_embed.translation.mt import GoogleBackend
    from test_translate import make_terms, synthetic_terms

    b = GoogleBackend(project="p", endpoint=f"http://127.0.0.1:{_closed_port()}", credentials=AnonymousCredentials(),
                      retry_deadline=0.5, initial_backoff=0.01)
    tp = make_terms(tmp_path / "terms.parquet", synthetic_terms(3))
    p = TranslateParams(languages=["de"], sources=["cache", "mt"], mt=["google"])
    metrics = tmp_path / "translate.json"
    line = one_line_error(capsys, lambda: translate.run(p, terms_path=tp, out_dir=tmp_path / "out",
                                                        metrics_path=metrics, backends={"google": b}))
    assert line.startswith("error: translate.mt: google: gave up after retrying for 0.5 s (translate.retry_deadline)")
    assert "3 files kept" in line
    assert metrics.is_file()                                    # written, not left deleted
    m = json.loads(metrics.with_name("translate.report.json").read_text())   # every count
    assert m["languages"]["de"]["retries"] >= 1 and m["languages"]["de"]["labels"]["missing"] == 3


def test_malformed_google_credentials_file_is_an_error_not_a_skip(tmp_path, monkeypatch, capsys):
    from hpo_embed.translation.mt import make_backend

    cred = tmp_path / "sa.json"
    cred.write_text('{"type": "service_account", "private_key": "SEKRET-KEY-MATERIAL", ')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(cred))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    line = one_line_error(capsys, lambda: make_backend("google", TranslateParams(mt=["google"])))
    assert line.startswith(f"error: translate.mt: google: env GOOGLE_APPLICATION_CREDENTIALS={cred}: ")
    assert "SEKRET" not in line


# =========================================================================== 4. read-only / full disk

@pytest.mark.parametrize("code, cause", [(errno.EROFS, "Read-only file system"),
                                         (errno.ENOSPC, "No space left on device")])
def test_read_only_or_full_disk_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys, code, cause):
    from test_translate import make_terms, synthetic_terms

    tp = make_terms(tmp_path / "terms.parquet", synthetic_terms(3))
    out = tmp_path / "translations"
    p = TranslateParams(languages=["de"], sources=["cache"], official=str(tmp_path / "none"))
    translate.run(p, terms_path=tp, out_dir=out, metrics_path=None)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    make_terms(tp, [{**t, "label": t["label"] + " (changed)"} for t in synthetic_terms(3)])

    def failing_replace(src, dst):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr("hpo_embed.common.os.replace", failing_replace)
    line = one_line_error(capsys, lambda: translate.run(p, terms_path=tp, out_dir=out, metrics_path=None))
    assert line.startswith(f"error: {out}/HP_1000000.json: cannot write: {cause} [{errno.errorcode[code]}]")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before   # nothing half-written, no temp left


def test_environment_oserror_anywhere_in_a_stage_is_one_line_but_a_bug_keeps_its_traceback(capsys):
    def read_only():
        raise OSError(errno.EROFS, "Read-only file system", "data/translations/HP_0000001.json")
    assert one_line_error(capsys, read_only) == ("error: data/translations/HP_0000001.json: cannot write: "
                                                 "Read-only file system [EROFS]; make it writable and rerun")

    def arrow_full_disk():   # pyarrow: errno only in the message
        raise OSError("Failed to open local file 'data/hpo/terms.parquet'. Detail: [errno 28] No space left on device")
    line = one_line_error(capsys, arrow_full_disk)
    assert "data/hpo/terms.parquet" in line and line.endswith("No space left on device [ENOSPC]; free some space and rerun")

    def bug():
        raise OSError(errno.EBADF, "Bad file descriptor")
    with pytest.raises(OSError):
        run_stage(bug)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder_by_chmod(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        line = one_line_error(capsys, lambda: atomic_write_text(folder / "x.json", "{}"))
        assert line.startswith(f"error: {folder}/x.json: cannot write: Permission denied")
    finally:
        folder.chmod(0o755)


# =========================================================================== 5. Babelon short row

def test_babelon_row_with_too_few_fields_is_a_file_line_error(tmp_path):
    from hpo_embed.translation import babelon

    f = tmp_path / "hp-de.babelon.tsv"
    f.write_text("subject_id\tpredicate_id\ttranslation_value\ttranslation_status\n"
                 "HP:0000001\trdfs:label\tAlle\tOFFICIAL\n"
                 "HP:0000002\trdfs:label\tOFFICIAL\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{f}:3: 3 fields, header has 4$"):
        babelon.read_language(tmp_path, "de", ["OFFICIAL"])
    f.write_text(f.read_text().replace("\tOFFICIAL\n", "\tOFFICIAL\textra\n", 1))
    with pytest.raises(UserError, match=rf"^{f}:2: 5 fields, header has 4$"):
        babelon.read_language(tmp_path, "de", ["OFFICIAL"])


# =========================================================================== 6. quantize temp folders

def test_stale_quantize_temp_folders_are_removed_and_ignored_by_git(tmp_path):
    from hpo_embed.common import remove_stale_temp

    out = tmp_path / "onnx"
    dead = tmp_path / ".onnx.tmp-999999999-abc"        # no such pid
    legacy = tmp_path / ".onnx.tmp-k3j4"               # older name without a pid
    old = tmp_path / f".onnx.old-{999999999}"
    alive = tmp_path / f".onnx.tmp-{os.getppid()}-xyz"  # a run still going
    for d in (dead, legacy, old, alive):
        (d / "onnx").mkdir(parents=True)
        (d / "onnx" / "model.onnx").write_bytes(b"x" * 100)
    removed = remove_stale_temp(out)
    assert sorted(p.name for p in removed) == sorted(p.name for p in (dead, legacy, old))
    assert alive.is_dir() and not dead.exists() and not legacy.exists() and not old.exists()
    for path in ("models/.onnx.tmp-123-abcd/onnx/model.onnx", "models/.onnx.old-77/x",
                 "data/translations/.HP_0000001.json.abc.tmp", "data/benchmark/cache/m.npy.parts/00000.npy"):
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert r.returncode == 0, f"{path} is not git-ignored"


# =========================================================================== 7. dvclive on resume

def test_resume_truncates_dvclive_curves_to_the_checkpoint_step(tmp_path):
    from hpo_embed.training.monitor import truncate_live_history

    metrics = tmp_path / "dvclive" / "plots" / "metrics"
    (metrics / "train").mkdir(parents=True)
    (metrics / "eval").mkdir()
    (metrics / "train" / "loss.tsv").write_text(
        "timestamp\tstep\tloss\n" + "".join(f"{1000 + s}\t{s}\t{1 / s:.3f}\n" for s in range(1, 21)) + "1020\t2")
    (metrics / "eval" / "dev_mrr@10.tsv").write_text(
        "timestamp\tstep\tdev_mrr@10\n" + "".join(f"{1000 + s}\t{s}\t0.{s:02d}\n" for s in (0, 6, 12, 18)))
    assert truncate_live_history(tmp_path / "dvclive", 12) == 8 + 1 + 1
    loss = pd.read_csv(metrics / "train" / "loss.tsv", sep="\t")
    assert loss["step"].tolist() == list(range(1, 13))
    assert pd.read_csv(metrics / "eval" / "dev_mrr@10.tsv", sep="\t")["step"].tolist() == [0, 6, 12]
    assert truncate_live_history(tmp_path / "dvclive", 12) == 0


@pytest.mark.parametrize("cut", ["", '{"step": 12, "eval": {"dev_mrr"'])
def test_resume_survives_a_dvclive_summary_cut_by_the_kill(tmp_path, cut):
    """A SIGKILL while dvclive writes metrics.json leaves it empty or half written; the resumed
    run opens its dvclive log anyway (CI once failed here with JSONDecodeError)."""
    from hpo_embed.training.monitor import open_live

    live_dir = tmp_path / "dvclive"
    (live_dir / "plots" / "metrics" / "train").mkdir(parents=True)
    (live_dir / "plots" / "metrics" / "train" / "loss.tsv").write_text(
        "step\tloss\n" + "".join(f"{s}\t0.5\n" for s in range(1, 15)))
    (live_dir / "metrics.json").write_text(cut)
    live = open_live(live_dir, str(tmp_path / "checkpoints" / "checkpoint-12"), {"mrr": 0.1})
    live.step = 13
    live.log_metric("train/loss", 0.4)
    live.next_step()
    assert json.loads((live_dir / "metrics.json").read_text())["step"] == 13
    steps = pd.read_csv(live_dir / "plots" / "metrics" / "train" / "loss.tsv", sep="\t")["step"].tolist()
    assert steps == list(range(1, 14))


def test_an_intact_dvclive_summary_is_kept(tmp_path):
    from hpo_embed.training.monitor import drop_cut_summary

    (tmp_path / "metrics.json").write_text('{"step": 12}')
    assert not drop_cut_summary(tmp_path) and (tmp_path / "metrics.json").exists()
    assert not drop_cut_summary(tmp_path / "absent")


# =========================================================================== 11. params

def test_duplicate_languages_are_rejected():
    with pytest.raises(UserError, match=r"^params.yaml: translate.languages: 'de' is listed twice$"):
        parse_params({"translate": {"languages": ["de", "de", "es"]}})
    with pytest.raises(UserError, match=r"benchmark.models: 'base' is listed twice"):
        parse_params({"benchmark": {"models": ["base", "base"]}})


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_params_file_is_rejected_like_dvc_does(tmp_path, text):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=rf"^{f}: empty params file"):
        load_params(f)
    r = subprocess.run([sys.executable, "-m", "hpo_embed.params", str(f)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {f}: empty params file")
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("raw, key", [({"lr": "fast"}, "lr"), ({"train": {"epochs": 0}}, "train.epochs"),
                                      ({"translate": {"languages": ["xx"]}}, "translate.languages"),
                                      ({"benchmark": {"bogus": 1}}, "benchmark.bogus")])
def test_bad_params_name_the_key(raw, key):
    with pytest.raises(UserError, match=rf"^params.yaml: {key}: ") as exc:
        parse_params(raw)
    assert "\n" not in str(exc.value)


# =========================================================================== 12. profiles

def _values(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _dvc_exp_set(params: Path, override: str) -> None:
    """Rewrite params.yaml exactly as `dvc exp run -S <override>` does (block-style lists)."""
    from dvc.utils.hydra import apply_overrides
    apply_overrides(str(params), [override])


def test_profile_round_trip_on_the_shipped_params_keeps_nulls_and_flow_lists(tmp_path, monkeypatch):
    from hpo_embed.gpu.profile import main
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    monkeypatch.setattr("hpo_embed.gpu.profile.PARAMS_FILE", params)
    main(["gpu"])
    main(["embedded"])
    assert _values(params) == _values(REPO / "params.yaml")
    text = params.read_text()
    assert "  sha256: null" in text and "  roots: [HP:0000118]" in text and "  languages: [de, es, fr]" in text
    untouched = [ln for ln in (REPO / "params.yaml").read_text().splitlines() if ln.startswith("  types:")]
    assert untouched and untouched[0] in text.splitlines()


def test_profile_round_trip_after_dvc_exp_run(tmp_path, monkeypatch):
    pytest.importorskip("dvc")
    from hpo_embed.gpu.profile import main
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    monkeypatch.setattr("hpo_embed.gpu.profile.PARAMS_FILE", params)
    _dvc_exp_set(params, "lr=1e-5")
    assert "  - HP:0000118" in params.read_text()          # what DVC writes: block-style lists
    main(["gpu"])
    assert load_params(params).train.base_model == "BAAI/bge-m3"
    main(["embedded"])
    assert _values(params) == _values(REPO / "params.yaml")
    _dvc_exp_set(params, "train.epochs=2")                  # and once more from the restored file
    main(["gpu"])
    main(["embedded"])
    want = _values(REPO / "params.yaml")
    got = _values(params)
    assert got["train"].pop("epochs") == 1.0 and want["train"].pop("epochs") == 1.0
    assert got == want


def test_profile_on_an_unreadable_params_file_is_one_line(tmp_path, monkeypatch, capsys):
    from hpo_embed.gpu.profile import main
    params = tmp_path / "params.yaml"
    params.write_text("lr: 1\nbenchmark:\n  external_sets: -\n  - x\n")
    monkeypatch.setattr("hpo_embed.gpu.profile.PARAMS_FILE", params)
    before = params.read_text()
    line = one_line_error(capsys, lambda: main(["embedded"]))
    assert line.startswith(f"error: {params}:3: not valid YAML")
    assert params.read_text() == before


# =========================================================================== already held: kill -9, concurrency, secrets

KILL_ENCODE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from sentence_transformers import SentenceTransformer
    from hpo_embed import embedding as emb
    model_dir, cache = sys.argv[1:3]
    emb.CHUNK = 10
    model = SentenceTransformer(model_dir, device="cpu")
    real, calls = model.encode, []
    def encode(batch, **kw):
        calls.append(len(batch))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(batch, **kw)
    model.encode = encode
    emb.encode_cached(lambda: model, [f"text number {i}" for i in range(25)], Path(cache), 4, "t")
""")


def test_benchmark_killed_with_sigkill_resumes_from_the_last_chunk(tmp_path, tiny_model_dir, monkeypatch):
    from sentence_transformers import SentenceTransformer

    script = tmp_path / "kill.py"
    script.write_text(KILL_ENCODE)
    cache = tmp_path / "cache" / "m.npy"
    r = subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(cache)], cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not cache.exists() and len(list(cache.with_name("m.npy.parts").glob("*.npy"))) == 1
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    calls = []
    real = model.encode
    monkeypatch.setattr(model, "encode", lambda b, **kw: calls.append(len(b)) or real(b, **kw))
    monkeypatch.setattr(emb, "CHUNK", 10)
    texts = [f"text number {i}" for i in range(25)]
    out = emb.encode_cached(lambda: model, texts, cache, 4, "t")
    assert calls == [10, 5]                                  # the chunk finished before the kill is reused
    assert np.allclose(out, model.encode(texts, normalize_embeddings=True), atol=1e-5)


def test_corrupt_per_id_json_is_reported_and_rebuilt(tmp_path, caplog):
    from test_translate import make_terms, synthetic_terms

    tp = make_terms(tmp_path / "terms.parquet", synthetic_terms(2))
    out = tmp_path / "out"
    p = TranslateParams(languages=["de"], sources=["cache"], official=str(tmp_path / "none"))
    translate.run(p, terms_path=tp, out_dir=out, metrics_path=None)
    good = (out / "HP_1000001.json").read_bytes()
    (out / "HP_1000001.json").write_bytes(good[:40])
    caplog.set_level(logging.WARNING)
    m = translate.run(p, terms_path=tp, out_dir=out, metrics_path=None)
    assert m["corrupt_files_rebuilt"] == 1 and (out / "HP_1000001.json").read_bytes() == good
    assert sum("HP_1000001.json" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records) == 1


def test_secrets_from_the_environment_are_never_written(tmp_path, monkeypatch, caplog):
    from test_translate import FakeServer, make_terms, synthetic_terms

    secret = "sekret-deepl-key-4711:fx"
    monkeypatch.setenv("DEEPL_AUTH_KEY", secret)

    def respond(srv, path, body, n):
        texts = body["text"] if isinstance(body.get("text"), list) else body.get("text", [])
        return 200, {"translations": [{"detected_source_language": "EN", "text": f"<de> {t}",
                                      "billed_characters": len(t)} for t in texts]}
    srv = FakeServer(respond)
    caplog.set_level(logging.DEBUG)
    try:
        tp = make_terms(tmp_path / "terms.parquet", synthetic_terms(3))
        p = TranslateParams(languages=["de"], sources=["cache", "mt"], mt=["deepl"], mt_fields=["label"],
                            deepl_server_url=srv.url, official=str(tmp_path / "none"))
        translate.run(p, terms_path=tp, out_dir=tmp_path / "out", metrics_path=tmp_path / "translate.json")
    finally:
        srv.close()
    assert len(list((tmp_path / "out").glob("HP_*.json"))) == 3
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    assert secret not in caplog.text


@pytest.mark.skipif(not DVC.exists(), reason="dvc not installed in this environment")
def test_a_second_concurrent_dvc_repro_is_refused(tmp_path):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": f"{DVC.parent}{os.pathsep}{os.environ['PATH']}"}
    # the stage holds the repository until the test releases it: no race with a slow second start
    (tmp_path / "slow.py").write_text(textwrap.dedent("""
        import pathlib, time
        pathlib.Path("started").touch()
        deadline = time.time() + 120
        while not pathlib.Path("release").exists() and time.time() < deadline:
            time.sleep(0.05)
        pathlib.Path("out.txt").write_text("done")
    """))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"slow": {
        "cmd": "python slow.py", "deps": ["slow.py"], "outs": [{"out.txt": {"cache": False}}]}}}))
    for cmd in (["git", "init", "-q"], [str(DVC), "init", "-q"], [str(DVC), "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True)
    first = subprocess.Popen([str(DVC), "repro"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "started").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert (tmp_path / "started").exists(), first.communicate()
        second = subprocess.run([str(DVC), "repro"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode != 0 and "lock" in (second.stderr + second.stdout).lower()
    finally:
        (tmp_path / "release").touch()
        first.wait(timeout=120)
    assert first.returncode == 0 and (tmp_path / "out.txt").read_text() == "done"


# =========================================================================== 26. smaller items

@pytest.mark.parametrize("model_type, dropped", [("bert", True), ("xlm-roberta", True), ("mistral", False)])
def test_mistral_regex_warning_is_dropped_for_known_good_tokenizers_only(tmp_path, model_type, dropped):
    """transformers 4.57.3+ warns "incorrect regex pattern" on every load of a large-vocabulary
    tokenizer it saved (every e5 load here); only Mistral-family models are affected."""
    from hpo_embed.models.loader import known_good_tokenizer
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    logger = logging.getLogger("transformers.tokenization_utils_base")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())
    handler = Keep(logging.WARNING)
    logger.addHandler(handler)
    try:
        msg = "The tokenizer you are loading from 'x' with an incorrect regex pattern: https://..."
        with known_good_tokenizer(tmp_path):
            logger.warning(msg)
            logger.warning("another warning")
        assert "another warning" in seen and (msg in seen) is not dropped
        seen.clear()
        logger.warning(msg)   # outside the context nothing is filtered
        assert seen == [msg]
    finally:
        logger.removeHandler(handler)


def test_params_errors_name_the_file_that_was_checked(tmp_path):
    """`make params` / `python -m hpo_embed.params other.yaml` named params.yaml whatever it checked."""
    other = tmp_path / "sweep.yaml"
    other.write_text("lr: abc\n")
    proc = subprocess.run([sys.executable, "-m", "hpo_embed.params", str(other)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {other}: lr: expected a number, got 'abc'"
    with pytest.raises(UserError, match=r"^profile gpu: train.save_steps: 7 must be a multiple"):
        parse_params({"train": {"save_steps": 7}}, "profile gpu")


def test_empty_quantize_candidates_with_method_auto_is_rejected_by_the_validator():
    """Issue #26 (3): it passed validation, exported fp32 for a minute, then FileNotFoundError."""
    with pytest.raises(UserError, match=r"^params.yaml: quantize.candidates: empty with quantize.method auto"):
        parse_params({"quantize": {"candidates": []}})
    assert parse_params({"quantize": {"candidates": [], "method": "dynamic"}}).quantize.method == "dynamic"
