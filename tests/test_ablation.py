"""scripts/ablation.py (the -S arguments of an arm, queueing, collecting) and hpo_embed.study
(the tables and plot built from the arms' saved results)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from script_loader import load_script as load

from hpo_embed import study as st
from hpo_embed.common import UserError

REPO = Path(__file__).resolve().parent.parent


def load_script():
    return load("ablation")


@pytest.mark.parametrize("study", ["ablation", "scaling"])
def test_config_arms_are_valid_params(study):
    """Every arm's settings, applied to params.yaml, validate (a typo would cost a long run)."""
    from hpo_embed.params import parse_params
    config = yaml.safe_load((REPO / "configs" / f"{study}.yaml").read_text())
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    for arm, settings in config["arms"].items():
        raw = json.loads(json.dumps(base))
        for key, value in {**config["common"], **settings}.items():
            section, _, name = key.rpartition(".")
            target = raw[section] if section else raw
            assert name in target, f"{arm}: {key} is not a parameter"
            target[name] = value
        parse_params(raw)
    assert set(config["titles"]) == set(config["arms"]) and config.get("baseline") in config["arms"]
    assert set(config.get("readme_arms") or []) <= set(config["arms"])   # a typo would drop a README row


def test_tables_from_arm_reports(tmp_path, monkeypatch):
    config = {"steps": "200 steps", "mode": "multi", "arms": {"a": {}, "b": {}, "c": {}},
              "titles": {"a": "in-batch", "b": "mined", "c": "iterative"}}
    study = st.Study(config, tmp_path)

    def report(mrr: float) -> dict:
        out = {}
        for k in ("heldout.de", "heldout.fr", "phentrieve.70cases_o3_v1"):
            out |= {f"multi.{k}.finetuned.mrr": mrr, f"multi.{k}.finetuned.mrr_ci_low": mrr - 0.01,
                    f"multi.{k}.finetuned.mrr_ci_high": mrr + 0.01, f"multi.{k}.finetuned.hr@1": mrr - 0.1,
                    f"multi.{k}.finetuned.n_queries": 70}
        return out

    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(0)
    base_rr = rng.uniform(0.2, 0.9, 70)
    for arm, mrr in (("a", 0.7), ("b", 0.75)):
        (tmp_path / f"{arm}.json").write_text(json.dumps({"benchmark": report(mrr), "train": {
            "dev_mrr_best": mrr, "train_time_s": 100.0}, "experiment": f"abl-{arm}", "base_commit": "0123456789"}))
        rows = []
        for key in ("heldout.de", "heldout.fr", "heldout.all", "phentrieve.70cases_o3_v1"):
            held = key.startswith("heldout.")
            # arm b: every query's reciprocal rank 0.05 above arm a's on the same queries
            rr = base_rr + (0.05 if arm == "b" else 0.0)
            rows += [{"retrieval": "multi", "set": "heldout" if held else key, "lang": key[8:] if held else None,
                      "query": f"q{i}", "mrr": rr[i], "hr@1": float(rr[i] > 0.5)} for i in range(70)]
        pd.DataFrame(rows).to_parquet(tmp_path / f"{arm}.per_query.parquet")
    full = st.full_table(study)
    assert "| held-out German (70) | MRR | 0.700 [0.690, 0.710] | 0.750 [0.740, 0.760] |" in full
    assert "- mined: `abl-b` at commit 0123456" in full
    # the paired difference: +0.05 on every query -> a zero-width CI and a small permutation p
    delta = [ln for ln in full.splitlines() if ln.startswith("| held-out German (70) | Δ MRR vs in-batch |")]
    assert len(delta) == 1 and "| (baseline) | +0.050 [+0.050, +0.050] p=0.00" in delta[0]
    short = st.readme_table(study)
    assert "| negatives | de | fr | o3 | Δ MRR held-out |" in short
    assert "| mined | 0.750 / 0.650 | 0.750 / 0.650 | 0.750 / 0.650 | +0.050 [+0.050, +0.050] p=0.00" in short
    assert "| in-batch | 0.700 / 0.600 | 0.700 / 0.600 | 0.700 / 0.600 | – |" in short
    assert "Not run yet: iterative." in short
    # readme_arms keeps the README a front page: the other finished arms are named, not tabled
    front = st.readme_table(st.Study({**config, "baseline": "a", "readme_arms": ["b"]}, tmp_path))
    assert "| mined | 0.750 / 0.650 | 0.750 / 0.650 | 0.750 / 0.650 | +0.050 [+0.050, +0.050] p=0.00" in front
    assert "| in-batch |" not in front
    assert f"Also measured: 1 more arm, in [reports/{tmp_path.name}.md]" in front and "Not run yet: iterative." in front
    # one-factor steps: b changes one factor of a (c is not run: no row)
    stepped = st.full_table(st.Study({**config, "parent": {"b": "a", "c": "b"}}, tmp_path))
    row = [ln for ln in stepped.splitlines() if ln.startswith("| in-batch → mined |")]
    assert len(row) == 1 and row[0].count("+0.050 [+0.050, +0.050] p=0.00") == 2   # the plotted sets present: de, o3
    assert "→ iterative" not in stepped and "**One-factor steps**" not in full


def test_paired_difference_refuses_different_queries(tmp_path):
    import pandas as pd
    import pytest
    a = pd.DataFrame({"retrieval": ["multi"] * 3, "set": ["heldout"] * 3, "lang": ["de"] * 3,
                      "query": ["x", "y", "z"], "mrr": [1.0, 0.5, 0.2]})
    b = a.assign(query=["x", "y", "w"])
    assert st.paired_mrr(a, a.assign(mrr=[0.5, 0.5, 0.2]), "multi", "heldout.de", 200, 0)["diff"] == pytest.approx(0.5 / 3)
    assert st.paired_mrr(a, None, "multi", "heldout.de", 200, 0) is None
    with pytest.raises(UserError, match="heldout.de: the arms were scored on different queries"):
        st.paired_mrr(a, b, "multi", "heldout.de", 200, 0)


def test_readme_hard_negative_verdict_is_the_committed_arms():
    """The README's hard-negative verdict (the 6.4k table itself is reports/ablation.md) quotes
    the best arm's paired difference as scripts/ablation.py computes it from the committed
    per-query files (no hand-typed number), and every arm of configs/ablation.yaml has run."""
    config = yaml.safe_load((REPO / "configs" / "ablation.yaml").read_text())
    for arm in config["arms"]:
        assert (REPO / "reports" / "ablation" / f"{arm}.per_query.parquet").is_file(), arm
    resamples, seed = st.stats_params()
    study = st.Study.load(REPO / "configs" / "ablation.yaml")
    base = study.per_query("in_batch")
    deltas = {arm: st.paired_mrr(study.per_query(arm), base, "multi", "heldout.all", resamples, seed)
              for arm in config["arms"] if arm != "in_batch"}
    best = max(deltas, key=lambda a: deltas[a]["diff"])
    d = deltas[best]
    readme = (REPO / "README.md").read_text()
    quoted = f"(best, {config['titles'][best]}: −{abs(d['diff']):.3f}, p = {d['p_value']:.3f})"
    assert all(x["diff"] < 0 for x in deltas.values()) and quoted in " ".join(readme.split()), quoted


def test_scaling_study_table_and_plot(tmp_path, monkeypatch):
    """A study with ``plot:`` gets its x axes (pairs, minutes), each arm's paired difference to
    the untuned base from the benchmark stage's report, and a PNG of MRR against both axes."""
    real = st.Study.load(REPO / "configs" / "scaling.yaml")
    assert real.out == REPO / "reports" / "scaling" and real.section == "scaling"
    study = st.Study({**real.config, "arms": {"pairs_6k": {}, "pairs_26k": {}}}, tmp_path / "scaling")
    study.out.mkdir()
    for arm, pairs, mrr in (("pairs_6k", 6400, 0.70), ("pairs_26k", 25600, 0.74)):
        bench = {}
        for k in ("heldout.de", "heldout.all", "phentrieve.70cases_o3_v1"):
            bench |= {f"multi.{k}.finetuned.mrr": mrr, f"multi.{k}.finetuned.mrr_ci_low": mrr - 0.02,
                      f"multi.{k}.finetuned.mrr_ci_high": mrr + 0.02, f"multi.{k}.finetuned.hr@1": mrr - 0.1,
                      f"multi.{k}.finetuned.n_queries": 70, f"multi.{k}.finetuned_vs_base.mrr_diff": mrr - 0.65,
                      f"multi.{k}.finetuned_vs_base.mrr_diff_ci_low": mrr - 0.68,
                      f"multi.{k}.finetuned_vs_base.mrr_diff_ci_high": mrr - 0.62,
                      f"multi.{k}.finetuned_vs_base.p_value": 0.002}
        (study.out / f"{arm}.json").write_text(json.dumps({"benchmark": bench, "experiment": f"scl-{arm}",
                                                         "base_commit": "0123456789", "train": {
                                                             "dev_mrr_best": mrr, "train_time_s": pairs / 24,
                                                             "pairs": pairs}}))
    text = st.full_table(study)
    assert "| training pairs | | 6400 | 25600 |" in text
    # an arm over the same rows twice says so, and the plot puts it at the rows it saw
    assert st.epochs_note({"pairs": 25600, "epochs": 2.0}) == " x 2 epochs" and st.epochs_note({"pairs": 1}) == ""
    assert st.pairs_seen({"pairs": 25600, "epochs": 2.0}) == 51200 and st.pairs_seen({"pairs": 6400}) == 6400
    assert "| held-out German | Δ MRR vs untuned base | +0.050 [+0.020, +0.080] p=0.002 | +0.090 [+0.060, +0.120] " \
           "p=0.002 |" in text
    png = tmp_path / "scaling.png"
    assert st.plot_study(study, png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    one = st.Study({**study.config, "arms": {"pairs_6k": {}}}, study.out)
    assert not st.plot_study(one, tmp_path / "one.png")   # one point is no curve
    # regenerating keeps the person-written reading of the numbers
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- scaling:start -->\nold rows\n<!-- scaling:end -->\n")
    (tmp_path / "scaling.md").write_text("# old\n\n<!-- notes:start -->\nflattens at 25.6k\n<!-- notes:end -->\nold table\n")
    st.write_reports(study, readme)
    again = (tmp_path / "scaling.md").read_text()
    assert "flattens at 25.6k" in again and "old table" not in again and "| training pairs | | 6400 | 25600 |" in again
    section = readme.read_text()   # the README's short table, between the study's marks
    assert "old rows" not in section and "| 25.6k, lr 1e-4 | 0.740 / 0.640 |" in section


def test_queue_runs_each_arm_to_the_study_target_then_collects_the_successful(monkeypatch):
    """`queue` hands hpo_embed.experiments.queue every arm's experiment name, its settings
    (the study's shared ones first) and the study's target, and collects the arms that
    succeeded only."""
    abl = load_script()
    config = {"prefix": "scl", "target": "benchmark", "common": {"quantize.method": "dynamic"},
              "arms": {"big": {"lr": 1e-4}, "bigger": {"train.max_train_pairs": None}}}
    study = st.Study(config, abl.ROOT / "reports" / "scaling")
    handed, collected = {}, []

    def queue(runs, root, poll_s):
        handed.update(runs)
        return {"scl-big": "Success", "scl-bigger": "Failed"}
    monkeypatch.setattr(abl.experiments, "queue", queue)
    monkeypatch.setattr(abl, "collect", lambda arms, s: collected.extend(arms))
    abl.queue(["big", "bigger"], study, poll_s=0)
    assert handed == {"scl-big": ({"quantize.method": "dynamic", "lr": 1e-4}, "benchmark"),
                      "scl-bigger": ({"quantize.method": "dynamic", "train.max_train_pairs": None}, "benchmark")}
    assert collected == ["big"]


def test_collect_reads_the_experiment_commit_not_the_workspace(tmp_path, monkeypatch):
    """collect takes an arm's reports from its experiment's commit (git) and its per-query
    table from the DVC cache; the workspace (another arm's files here) and refs/exps/apply
    stay out of it, and a file the experiment lacks (metrics/mine.json) reads as None."""
    import shutil
    import subprocess

    import pandas as pd
    abl = load_script()
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")

    def run(*cmd):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)

    def write(mrr: float):
        for path, data in (("reports/benchmark.json", {"multi.heldout.de.finetuned.mrr": mrr, "other": 1}),
                           ("metrics/train.json", {"pairs_per_s": 20.0}),
                           ("reports/train.json", {"pairs": 640, "pairs_by": {"languages": {"de": 64}}})):
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_text(json.dumps(data))
        (repo / "data" / "benchmark").mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"retrieval": ["multi"] * 2, "model": ["finetuned", "base"], "set": ["heldout"] * 2,
                      "lang": ["de"] * 2, "query": ["q1", "q1"], "mrr": [mrr, 0.1], "hr@1": [1.0, 0.0]}
                     ).to_parquet(repo / "data" / "benchmark" / "per_query.parquet")
        run(dvc, "add", "-q", "data/benchmark/per_query.parquet")
        run("git", "add", "-A")
        run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"mrr {mrr}")

    run("git", "init", "-q")
    run(dvc, "init", "-q")
    write(0.5)
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()
    write(0.8)   # the experiment's commit
    run("git", "update-ref", f"refs/exps/{base[:2]}/{base[2:]}/abl-a", "HEAD")
    write(0.3)   # the workspace moves on; a later apply stash must not be taken for the arm
    run("git", "update-ref", "refs/exps/apply/stash", "HEAD")
    monkeypatch.setattr(abl, "ROOT", repo)
    abl.collect(["a"], st.Study({"prefix": "abl", "common": {"x": 1}, "arms": {"a": {"y": 2}}}, tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "a.json").read_text())
    assert saved["benchmark"] == {"multi.heldout.de.finetuned.mrr": 0.8} and saved["mine"] is None
    assert saved["base_commit"] == base and saved["settings"] == {"x": 1, "y": 2} and saved["train"]["pairs"] == 640
    pq = pd.read_parquet(tmp_path / "out" / "a.per_query.parquet")
    assert list(pq["mrr"]) == [0.8] and "model" not in pq
    with pytest.raises(UserError, match="no experiment named abl-b"):   # main() prints it as one line
        abl.collect(["b"], st.Study({"prefix": "abl", "common": {}, "arms": {"b": {}}}, tmp_path / "out"))


def test_a_bad_study_is_one_line(tmp_path, capsys):
    """A missing or malformed config, an unknown arm and a study with no results yet stop with
    one line naming the file or arm; nothing is written."""
    abl = load_script()
    with pytest.raises(SystemExit, match=r"^error: .*nope.yaml: no such study config"):
        abl.main(["--config", str(tmp_path / "nope.yaml"), "table"])
    (tmp_path / "bad.yaml").write_text("name: x\narms: [a, b]\n")
    with pytest.raises(SystemExit, match=r"bad.yaml: a study config needs an `arms:` mapping"):
        abl.main(["--config", str(tmp_path / "bad.yaml"), "table"])
    with pytest.raises(SystemExit, match=r"unknown arm\(s\) \['nope'\]"):
        abl.main(["--config", str(REPO / "configs" / "scaling.yaml"), "collect", "nope"])
    (tmp_path / "empty.yaml").write_text("name: no_such_study_here\narms: {a: {}}\nsteps: x\n")
    with pytest.raises(SystemExit, match=r"^error: no arm results under .*no_such_study_here"):
        abl.main(["--config", str(tmp_path / "empty.yaml"), "table"])
    assert not (REPO / "reports" / "no_such_study_here.md").exists()


def test_report_sets_order_held_out_languages_then_external_sets():
    """One order for every table built from benchmark.json (README results, study tables):
    German, French, Spanish, English synonyms, all, then the external sets; per-branch keys
    and sets the model was not scored on are not rows."""
    report = {f"multi.{k}.finetuned.mrr": 0.5 for k in (
        "phentrieve.b", "heldout.all", "heldout.es", "phentrieve.a", "heldout.de", "heldout.en", "heldout.fr")}
    report |= {"multi.heldout.branch.HP:0000119.finetuned.mrr": 0.4, "multi.heldout.it.base.mrr": 0.3,
               "single.heldout.de.finetuned.mrr": 0.2}
    assert st.report_sets(report, "multi", "finetuned") == [
        "heldout.de", "heldout.fr", "heldout.es", "heldout.en", "heldout.all", "phentrieve.a", "phentrieve.b"]
    assert st.report_sets(report, "multi", "base") == ["heldout.it"]
    assert st.report_sets(report, "single", "finetuned") == ["heldout.de"]
