"""scripts/release_report.py: reports/release/ from a release run's experiment files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from script_loader import load_script as load

from hpo_embed.common import UserError

REPO = Path(__file__).resolve().parent.parent


def load_script():
    return load("release_report")


def experiment_files() -> dict[str, bytes]:
    """What a release run's commit holds, small: one held-out set and one phentrieve set."""
    bench = {}
    for key, n, base, ft, p in (("heldout.all", 5750, 0.796, 0.884, 0.002),
                                ("phentrieve.70cases_o3_v1", 70, 0.728, 0.779, 0.041)):
        bench |= {f"multi.{key}.finetuned.n_queries": n, f"multi.{key}.base.mrr": base,
                  f"multi.{key}.finetuned.mrr": ft, f"multi.{key}.finetuned.mrr_ci_low": ft - 0.01,
                  f"multi.{key}.finetuned.mrr_ci_high": ft + 0.01,
                  f"multi.{key}.finetuned_vs_base.mrr_diff": ft - base,
                  f"multi.{key}.finetuned_vs_base.mrr_diff_ci_low": ft - base - 0.02,
                  f"multi.{key}.finetuned_vs_base.mrr_diff_ci_high": ft - base + 0.02,
                  f"multi.{key}.finetuned_vs_base.p_value": p}
    params = {"lr": 1e-4, "pairs": {"holdout_sets": []}, "train": {"loss": "cached_mnrl", "batch_size": 128}}
    files = {
        "params.yaml": yaml.safe_dump(params),
        "reports/benchmark.md": "# Benchmark\nseen / unseen\n",
        "reports/benchmark.json": json.dumps(bench),
        "metrics/benchmark.json": json.dumps({"phentrieve.70cases_o3_v1.n_cases_in_train": 54}),
        "metrics/pairs.json": json.dumps({"pairs": 62000}),
        "metrics/train.json": json.dumps({"train_time_s": 4100.4, "pairs_per_s": 15.1, "precision": "fp32",
                                          "dev_mrr_base": 0.7731, "dev_mrr_best": 0.8912, "best_step": 485}),
        "reports/train.json": json.dumps({"pairs": 61980, "steps": 970, "epochs": 2.0}),
        "metrics/quantize.json": json.dumps({"chosen": "fused_dynamic_qattention", "speed_ratio_b32": 2.2,
                                             "gate_passed": True, "mrr_delta": -0.0021, "hr1_delta": -0.003}),
        "reports/quantize.md": "# INT8\n",
        "metrics/release.json": json.dumps({"name": "hpo-embed-x"}),
        "release/hpo-embed-x/README.md": "# model card\n",
    }
    return {k: v.encode() for k, v in files.items()}


def test_release_report_copies_the_run_and_writes_its_headline(tmp_path):
    """The stage outputs land verbatim under their report names (the model card found through
    metrics/release.json), and the README's block is rewritten from them, prose kept."""
    rr = load_script()
    files = experiment_files()
    readme = tmp_path / "README.md"
    readme.write_text("# Release\n\nProse before.\n\n<!-- release:start -->\nold numbers\n<!-- release:end -->\n\nAfter.\n")
    rr.write("release-b128", "abcdef1234", rr.collect("release-b128", files.get), tmp_path)
    assert (tmp_path / "model_card.md").read_bytes() == files["release/hpo-embed-x/README.md"]
    assert (tmp_path / "train.report.json").read_bytes() == files["reports/train.json"]
    assert (tmp_path / "params.yaml").read_bytes() == files["params.yaml"]
    assert not (tmp_path / "benchmark.report.json").exists()
    text = readme.read_text()
    assert text.startswith("# Release\n\nProse before.\n") and text.endswith("\n\nAfter.\n")
    assert "old numbers" not in text
    assert ("Experiment `release-b128` (commit abcdef1): cached_mnrl, batch 128, lr 0.0001, 61,980 pairs "
            "× 2 epochs (970 steps), `pairs.holdout_sets: []`; training 4,100 s (15.1 pairs/s, fp32), "
            "dev MRR 0.773 → 0.891 (best step 485).") in text
    assert "| held-out, all languages | 5,750 | 0.796 | 0.884 (0.874–0.894) | +0.088 (+0.068 to +0.108) | 0.002 | none (held out) |" in text
    assert "| 70cases_o3_v1 | 70 | 0.728 | 0.779 (0.769–0.789) | +0.051 (+0.031 to +0.071) | 0.041 | 54 of 70 |" in text
    assert "held-out, German" not in text   # a set the run did not score gets no row
    assert "INT8: `fused_dynamic_qattention`, 2.2× PyTorch fp32 at batch 32, gate passed: True; " \
           "held-out MRR Δ -0.0021, HR@1 Δ -0.0030." in text


def test_release_report_refuses_an_incomplete_run_or_a_readme_without_its_block(tmp_path):
    rr = load_script()
    files = experiment_files()
    partial = {k: v for k, v in files.items() if not k.startswith("release/")}
    with pytest.raises(UserError, match="has no release folder"):
        rr.collect("arm", partial.get)   # an arm run to `benchmark` only
    with pytest.raises(UserError, match="has no reports/quantize.md"):
        rr.collect("arm", {k: v for k, v in files.items() if k != "reports/quantize.md"}.get)
    (tmp_path / "README.md").write_text("# Release, no block\n")
    with pytest.raises(UserError, match="no <!-- release:start -->"):
        rr.write("release-b128", "abcdef1234", rr.collect("release-b128", files.get), tmp_path)


def test_release_run_queues_the_release_profile_as_settings_and_refuses_a_failed_run(monkeypatch):
    """--queue runs the whole pipeline (no target) on profiles/release.yaml's keys as -S
    settings, params.yaml untouched; a run that did not succeed is a one-line error that
    says where to look, and nothing is copied."""
    rr = load_script()
    profile = yaml.safe_load((REPO / "profiles" / "release.yaml").read_text())
    handed, copied = {}, []

    def queue(runs, root, poll_s):
        handed.update(runs)
        return {name: "Success" if name == "rel-ok" else "Failed" for name in runs}
    monkeypatch.setattr(rr.experiments, "queue", queue)
    monkeypatch.setattr(rr, "exp_rev", lambda name, root: "abcdef1234")
    monkeypatch.setattr(rr, "collect", lambda name, read: {"benchmark.report.json": b""})
    monkeypatch.setattr(rr, "write", lambda name, rev, files: copied.append(name))
    params_before = (REPO / "params.yaml").read_bytes()
    rr.main(["--queue", "rel-ok"])
    settings, target = handed["rel-ok"]
    assert target is None and copied == ["rel-ok"]
    assert settings["pairs.holdout_sets"] == [] and settings["lr"] == profile["lr"]
    assert {k: settings[f"train.{k}"] for k in profile["train"]} == profile["train"]
    assert (REPO / "params.yaml").read_bytes() == params_before
    with pytest.raises(SystemExit, match="error: experiment rel-bad: Failed .*dvc queue logs rel-bad"):
        rr.main(["--queue", "rel-bad"])
    assert copied == ["rel-ok"]
