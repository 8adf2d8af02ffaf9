"""dvc.yaml deps cannot drift: every project module a stage's command imports (directly or
through other project modules, at module level or inside functions) is a dep of that
stage, so editing it reruns the stage."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from hpo_embed.common import ROOT

PACKAGES = ("stages", "hpo_embed")   # the stage scripts and the library


def _module_file(name: str, root: Path) -> Path | None:
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = root.joinpath(*parts)
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def imported_names(node: ast.AST) -> list[str]:
    """The absolute module names an import node may load (``from a.b import c``: ``a.b`` and
    ``a.b.c``, which is a module when ``c`` is one); [] for anything else."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return []


def local_imports(path: Path, root: Path) -> set[Path]:
    """Project modules imported anywhere in ``path`` (``import hpo_embed.x``,
    ``from hpo_embed.x import y``, ``from hpo_embed import x``), with the package
    ``__init__.py`` files they run when they hold more than a docstring."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        for name in imported_names(node):
            f = _module_file(name, root)
            if f is not None:
                found.add(f)
            parts = name.split(".")
            for i in range(1, len(parts)):   # importing a.b.c runs a/__init__.py and a/b/__init__.py
                init = root.joinpath(*parts[:i], "__init__.py")
                if parts[0] in PACKAGES and init.is_file():
                    found.add(init)
    return {f for f in found if f.name != "__init__.py" or _has_code(f)}


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]   # the docstring
    return bool(body)


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


@pytest.mark.parametrize("dep", ["hpo_embed/common.py", "hpo_embed/training", "stages/__init__.py"])
def test_the_check_fails_when_a_dep_is_removed(tmp_path, dep):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    name, stage = next((n, s) for n, s in stages["stages"].items() if dep in dep_paths(s))
    stage["deps"] = [d for d in stage["deps"] if (next(iter(d)) if isinstance(d, dict) else d) != dep]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages))
    missing = missing_deps(tmp_path / "dvc.yaml", ROOT).get(name, [])
    assert missing and all(m == dep or m.startswith(dep + "/") for m in missing)


def test_a_package_folder_dep_covers_its_modules(tmp_path):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    train = stages["stages"]["train"]
    assert "hpo_embed/training" in dep_paths(train)
    assert "hpo_embed/training/losses.py" in {str(f.relative_to(ROOT)) for f in
                                              closure(ROOT / "stages" / "train.py", ROOT)}
    assert missing_deps(ROOT / "dvc.yaml", ROOT).get("train") is None


def test_imports_inside_functions_count(tmp_path):
    pkg = tmp_path / "hpo_embed"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""docstring only: not a dep"""\n')
    (pkg / "sub" / "__init__.py").write_text("X = 1\n")
    (pkg / "a.py").write_text("def f():\n    from hpo_embed.b import g\n    return g\n")
    (pkg / "b.py").write_text("import hpo_embed.c\nfrom hpo_embed.sub import d\n")
    (pkg / "c.py").write_text("")
    (pkg / "sub" / "d.py").write_text("")
    got = {str(p.relative_to(pkg)) for p in closure(pkg / "a.py", tmp_path)}
    assert got == {"a.py", "b.py", "c.py", "sub/__init__.py", "sub/d.py"}


@pytest.mark.parametrize("cmd,expected", [("python -m stages.train --params params.yaml", "stages/train.py"),
                                          ("python -m stages.quantize --select", "stages/quantize.py"),
                                          ("echo hi", None)])
def test_entry_module(cmd, expected):
    got = entry_module(cmd, ROOT)
    assert (str(got.relative_to(ROOT)) if got else None) == expected
