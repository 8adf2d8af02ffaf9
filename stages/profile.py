"""Switch params.yaml between profiles: ``python -m stages.profile gpu|embedded``.

A profile is an overlay in ``profiles/<name>.yaml``: only the keys it sets change in
params.yaml; comments and every other key are kept (ruamel.yaml round trip). The
result is validated before params.yaml is replaced. ``embedded`` restores the
defaults, so the two overlays name the same keys.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

from ruamel.yaml import YAML

from stages.common import ROOT, UserError, atomic_write_text, run_stage
from stages.params import PARAMS_FILE, parse_params

PROFILES = ROOT / "profiles"


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 100
    return y


def overlay_keys(overlay: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in overlay.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            keys |= overlay_keys(v, key + ".")
        else:
            keys.add(key)
    return keys


def _merge(target, overlay: dict, prefix: str = "") -> None:
    for k, v in overlay.items():
        if isinstance(v, dict):
            if k not in target or not isinstance(target[k], dict):
                raise UserError(f"profile sets {prefix}{k}.* but params.yaml has no {prefix}{k} section")
            _merge(target[k], v, f"{prefix}{k}.")
        else:
            target[k] = v


def load_profile(name: str, folder: Path = PROFILES) -> dict:
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise UserError(f"unknown profile {name!r} (known: {known})")
    data = YAML(typ="safe").load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping")
    return data


def apply_profile(name: str, params_path: Path = PARAMS_FILE, folder: Path = PROFILES) -> str:
    """Return the text of ``params_path`` with the profile applied (validated)."""
    overlay = load_profile(name, folder)
    y = _yaml()
    doc = y.load(params_path.read_text(encoding="utf-8"))
    _merge(doc, overlay)
    buf = io.StringIO()
    y.dump(doc, buf)
    text = buf.getvalue()
    parse_params(YAML(typ="safe").load(text), f"profile {name}")
    return text


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise UserError("usage: python -m stages.profile <profile>  (profiles: "
                        + ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml"))) + ")")
    text = apply_profile(argv[0])
    atomic_write_text(PARAMS_FILE, text)
    print(f"params.yaml now uses the {argv[0]} profile ({PROFILES / (argv[0] + '.yaml')}); "
          "review with `dvc params diff`, run with `dvc repro` or `dvc exp run`")


if __name__ == "__main__":
    run_stage(main)
