"""scripts/<name>.py loaded as a module for the tests (scripts/ is not a package)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str):
    """A fresh module each call (a test may monkeypatch it), registered in sys.modules as
    ``scripts.<name>`` as an import would register it (a dataclass looks its module up there)."""
    spec = importlib.util.spec_from_file_location(f"scripts.{name}", SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
