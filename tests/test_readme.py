"""The README tells the truth: its HPO counts are what parse_hpo measures, its two
commands exist in the Makefile, and CI runs the README's test command."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def _count_table() -> dict[str, list[int]]:
    block = README.split("<!-- hpo-counts:start -->")[1].split("<!-- hpo-counts:end -->")[0]
    rows = {}
    for line in block.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = [int(c.replace(",", "")) for c in cells[1:] if c]
    return rows


def test_readme_hpo_counts_match_a_fresh_parse(hpo_terms):
    _, _, m = hpo_terms
    rows = _count_table()
    assert README.count(m["data_version"]) >= 1
    assert rows["terms"] == [m["terms"]["total"], m["terms"]["selected"]]
    assert rows["with a definition"] == [m["all"]["with_definition"], m["selected"]["with_definition"]]
    assert rows["synonyms"] == [m["all"]["synonyms"], m["selected"]["synonyms"]["total"]]
    assert rows["is_a edges"] == [m["edges"]["is_a"]]
    assert rows["obsolete terms (not selected)"] == [m["terms"]["obsolete"]]
    syn = m["selected"]["synonyms"]
    for scope in ("EXACT", "RELATED", "BROAD", "NARROW"):
        assert f"{scope} {syn[scope]:,}" in README
    assert f"{syn['type_layperson']:,}" in README


def test_readme_commands_exist_and_ci_runs_the_test_command():
    assert "make repro" in README and "make test" in README
    makefile = (REPO / "Makefile").read_text()
    for target in ("repro", "test", "profile-gpu", "profile-embedded"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
