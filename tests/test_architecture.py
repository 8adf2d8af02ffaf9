"""The code layout's rules (docs/stages.md#code-layout), checked on the source text.

- ``LAYERS`` is the one statement of the layer order: stage scripts -> features -> core.
  A module imports only its own layer or lower ones; nothing imports a stage script but
  another stage script.
- No import cycle among ``hpo_embed`` and ``stages`` modules (every import counts, also one
  inside a function).
- One definition per public top-level name in ``hpo_embed`` (a second ``build_index`` or
  ``encode_cached`` fails), except the role names every stage module has (``ROLE_NAMES``).
- Size: no ``hpo_embed`` file over 450 lines, no function over 80, no stage script over 60.
- Imports at module top; an import inside a function only of a heavy optional library
  (``LAZY_OK``, each with its reason).

Each check is also run on a small synthetic violation, so a check that cannot fail fails.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest
from test_dvc_deps import imported_names

REPO = Path(__file__).resolve().parents[1]

# The layer order, lowest first. A module belongs to the first layer with a matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("hpo_embed.common", "hpo_embed.params", "hpo_embed.schemas", "hpo_embed.hardware",
              "hpo_embed.checkpoints", "hpo_embed.embedding", "hpo_embed.ontology.graph", "hpo_embed.ontology.obo",
              "hpo_embed.ontology.source", "hpo_embed.models.loader", "hpo_embed.retrieval")),
    ("features", ("hpo_embed",)),
    ("stages", ("stages",)),
]
ROLE_NAMES = {"run", "main", "headline", "report_markdown", "summarize", "load"}
MAX_FILE_LINES, MAX_FUNCTION_LINES, MAX_STAGE_LINES = 450, 80, 60
# Libraries imported inside functions: heavy to import, or needed by one optional path only
# (a stage that does not use them starts without loading them).
LAZY_OK = {
    "torch": "heavy (~1 s); not needed by parse_hpo, translate, pairs, preflight",
    "sentence_transformers": "heavy (imports torch and transformers)",
    "transformers": "heavy",
    "datasets": "heavy; training only",
    "tokenizers": "the GPU estimate only",
    "safetensors": "the packed-model loader only",
    "huggingface_hub": "hub access is for the GPU profile only",
    "onnx": "quantize only",
    "onnxruntime": "quantize and the INT8 reranker only",
    "optimum": "quantize only",
    "scipy": "statistics and isotonic fits only",
    "sklearn": "calibration only",
    "google": "the optional Google MT backend",
    "deepl": "the optional DeepL MT backend",
    "matplotlib": "the study plot only (optional: no plot without it)",
}


def layer_of(module: str, layers=LAYERS) -> int:
    for i, (_, prefixes) in enumerate(layers):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module}: in no layer of LAYERS")


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def project_modules() -> dict[str, Path]:
    files = [*sorted((REPO / "hpo_embed").rglob("*.py")), *sorted((REPO / "stages").glob("*.py"))]
    return {module_name(p): p for p in files}


def module_level(tree: ast.Module) -> set[int]:
    """ids of the nodes at module level (also inside a module-level ``if``/``try``)."""
    top = {id(n) for n in tree.body}
    for n in tree.body:
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(m) for m in ast.walk(n)}
    return top


def imports_of(tree: ast.Module, module: str, known: set[str]) -> list[str]:
    """The project modules ``tree`` imports (anywhere, also inside functions)."""
    out = []
    for n in ast.walk(tree):
        for name in imported_names(n):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.append(name)
    return out


def graph(sources: dict[str, str]) -> dict[str, set[str]]:
    known = set(sources)
    return {m: set(imports_of(ast.parse(src), m, known)) for m, src in sources.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def upward_imports(edges: dict[str, set[str]], layers=LAYERS) -> list[str]:
    bad = []
    for m, targets in sorted(edges.items()):
        for t in sorted(targets):
            if layer_of(t, layers) > layer_of(m, layers):
                bad.append(f"{m} ({layers[layer_of(m, layers)][0]}) imports {t} ({layers[layer_of(t, layers)][0]})")
    return bad


def duplicate_definitions(sources: dict[str, str]) -> dict[str, list[str]]:
    where = defaultdict(list)
    for m, src in sources.items():
        for n in ast.parse(src).body:
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_"):
                where[n.name].append(m)
    return {k: v for k, v in where.items() if len(v) > 1 and k not in ROLE_NAMES}


def oversized(path: str, src: str, max_file: int, max_function: int) -> list[str]:
    out = []
    lines = len(src.splitlines())
    if lines > max_file:
        out.append(f"{path}: {lines} lines (max {max_file})")
    for n in ast.walk(ast.parse(src)):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = n.end_lineno - n.lineno + 1
            if length > max_function:
                out.append(f"{path}:{n.lineno}: {n.name} has {length} lines (max {max_function})")
    return out


def bad_lazy_imports(path: str, src: str) -> list[str]:
    tree = ast.parse(src)
    top = module_level(tree)
    out = []
    for n in ast.walk(tree):
        if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in top:
            mod = n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
            if (mod or "").split(".")[0] not in LAZY_OK:
                out.append(f"{path}:{n.lineno}: import of {mod} inside a function")
    return out


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return {m: p.read_text(encoding="utf-8") for m, p in project_modules().items()}


def test_every_module_has_a_layer(sources):
    for m in sources:
        layer_of(m)


def test_no_import_cycle(sources):
    assert cycles(graph(sources)) == []


def test_no_module_imports_a_higher_layer(sources):
    assert upward_imports(graph(sources)) == []


def test_each_public_name_is_defined_once(sources):
    assert duplicate_definitions({m: s for m, s in sources.items() if m.startswith("hpo_embed")}) == {}


def test_files_functions_and_stage_scripts_are_small(sources):
    problems = []
    for m, src in sources.items():
        path = str(project_modules()[m].relative_to(REPO))
        if m.startswith("hpo_embed"):
            problems += oversized(path, src, MAX_FILE_LINES, MAX_FUNCTION_LINES)
        else:
            problems += oversized(path, src, MAX_STAGE_LINES, MAX_STAGE_LINES)
    assert problems == []


def test_imports_inside_functions_are_heavy_optional_libraries_only(sources):
    problems = []
    for m, src in sources.items():
        problems += bad_lazy_imports(str(project_modules()[m].relative_to(REPO)), src)
    assert problems == []


# --------------------------------------------------------------------------- the checks can fail

SYNTHETIC = {
    "hpo_embed.common": "import os\n",
    "hpo_embed.a": "from hpo_embed.b import f\n\ndef run():\n    pass\n",
    "hpo_embed.b": "def f():\n    from hpo_embed.a import run\n",
    "hpo_embed.c": "from hpo_embed.common import x\n\ndef f():\n    pass\n\ndef run():\n    pass\n",
    "stages.s": "from hpo_embed.a import run\n",
}


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import():
    assert cycles(graph(SYNTHETIC)) == [["hpo_embed.a", "hpo_embed.b"]]


def test_the_layer_check_finds_an_upward_import():
    bad = dict(SYNTHETIC, **{"hpo_embed.common": "from hpo_embed.a import run\n"})
    assert upward_imports(graph(bad)) == ["hpo_embed.common (core) imports hpo_embed.a (features)"]
    assert upward_imports(graph(dict(SYNTHETIC, **{"hpo_embed.c": "import stages.s\n"}))) == [
        "hpo_embed.c (features) imports stages.s (stages)"]


def test_the_definition_check_finds_a_second_definition_but_not_a_role_name():
    assert duplicate_definitions(SYNTHETIC) == {"f": ["hpo_embed.b", "hpo_embed.c"]}


def test_the_size_check_finds_a_long_function_and_a_long_file():
    src = "def f():\n" + "    x = 1\n" * 80
    assert oversized("x.py", src, 1000, 80) == ["x.py:1: f has 81 lines (max 80)"]
    assert oversized("x.py", src, 50, 100) == ["x.py: 81 lines (max 50)"]


def test_the_lazy_import_check_allows_torch_but_not_json():
    src = "def f():\n    import torch\n    import json\n"
    assert bad_lazy_imports("x.py", src) == ["x.py:3: import of json inside a function"]


def test_layers_match_their_modules():
    assert layer_of("hpo_embed.retrieval.index") == 0 and layer_of("hpo_embed.benchmark.run") == 1
    assert layer_of("stages.train") == 2
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("scripts.ablation")
