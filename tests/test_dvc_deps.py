"""dvc.yaml deps cannot drift: every project module a stage's command imports (directly or
through other project modules, at module level or inside functions) is a dep of that
stage, so editing it reruns the stage."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from stages.common import ROOT

PACKAGE = "stages"


def _module_file(name: str, root: Path) -> Path | None:
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts)
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def local_imports(path: Path, root: Path) -> set[Path]:
    """Project modules imported anywhere in ``path`` (``import stages.x``,
    ``from stages.x import y``, ``from stages import x``)."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            f = _module_file(name, root)
            if f is not None and f.name != "__init__.py":
                found.add(f)
    return found


def closure(entry: Path, root: Path) -> set[Path]:
    seen, todo = set(), [entry]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo.extend(local_imports(f, root) - seen)
    return seen


def entry_module(cmd: str, root: Path) -> Path | None:
    m = re.search(r"python\S*\s+-m\s+([\w.]+)", cmd)
    return _module_file(m.group(1), root) if m else None


def dep_paths(stage: dict) -> list[str]:
    out = []
    for d in stage.get("deps", []):
        out.append(next(iter(d)) if isinstance(d, dict) else d)
    return [p.rstrip("/") for p in out]


def missing_deps(dvc_yaml: Path, root: Path) -> dict[str, list[str]]:
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    problems: dict[str, list[str]] = {}
    for name, stage in stages.items():
        entry = entry_module(str(stage.get("cmd", "")), root)
        if entry is None:
            continue
        deps = dep_paths(stage)
        needed = sorted(str(f.relative_to(root)) for f in closure(entry, root))
        miss = [f for f in needed if not any(f == d or f.startswith(d + "/") for d in deps)]
        if miss:
            problems[name] = miss
    return problems


def test_every_imported_project_module_is_a_dep_of_its_stage():
    assert missing_deps(ROOT / "dvc.yaml", ROOT) == {}


def test_the_check_fails_when_a_dep_is_removed(tmp_path):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    name, stage = next((n, s) for n, s in stages["stages"].items() if "stages/common.py" in dep_paths(s))
    stage["deps"] = [d for d in stage["deps"] if (next(iter(d)) if isinstance(d, dict) else d) != "stages/common.py"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages))
    assert "stages/common.py" in missing_deps(tmp_path / "dvc.yaml", ROOT).get(name, [])


def test_imports_inside_functions_count(tmp_path):
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from stages.b import g\n    return g\n")
    (pkg / "b.py").write_text("import stages.c\n")
    (pkg / "c.py").write_text("")
    got = {p.name for p in closure(pkg / "a.py", tmp_path)}
    assert got == {"a.py", "b.py", "c.py"}


@pytest.mark.parametrize("cmd,expected", [("python -m stages.train", "stages/train.py"),
                                          ("python -m stages.quantize --select", "stages/quantize.py"),
                                          ("echo hi", None)])
def test_entry_module(cmd, expected):
    got = entry_module(cmd, ROOT)
    assert (str(got.relative_to(ROOT)) if got else None) == expected
