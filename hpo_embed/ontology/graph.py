"""The HPO is-a graph, built once from ``edges.parquet`` (child, parent) and shared.

Every feature that walks the ontology asks this class: the benchmark's ontology
similarity (ancestors, depths), the hard-negative miner (siblings, cousins, lineage) and
the sibling sampler of the train stage. ``load_graph`` caches one graph per file.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from hpo_embed.common import UserError
from hpo_embed.schemas import read_table


class IsAGraph:
    """Parents and children of each concept, with memoised transitive closures.

    ``ancestors``/``descendants`` exclude the concept itself; ``lineage`` is both.
    Self-loops are ignored."""

    def __init__(self, edges: Iterable[tuple[str, str]]) -> None:
        self.parents: dict[str, set[str]] = defaultdict(set)
        self.children: dict[str, set[str]] = defaultdict(set)
        for child, parent in edges:
            if child != parent:
                self.parents[child].add(parent)
                self.children[parent].add(child)
        self._anc: dict[str, frozenset[str]] = {}
        self._desc: dict[str, frozenset[str]] = {}

    @classmethod
    def from_table(cls, edges) -> "IsAGraph":
        """From a DataFrame or Arrow table with columns child, parent."""
        return cls(zip(edges["child"], edges["parent"]))

    def _closure(self, start: str, step: dict[str, set[str]], memo: dict[str, frozenset[str]]) -> frozenset[str]:
        if start in memo:
            return memo[start]
        out: set[str] = set()
        stack = list(step.get(start, ()))
        while stack:
            node = stack.pop()
            if node not in out:
                out.add(node)
                stack.extend(step.get(node, ()))
        memo[start] = frozenset(out)
        return memo[start]

    def ancestors(self, c: str) -> frozenset[str]:
        return self._closure(c, self.parents, self._anc)

    def descendants(self, c: str) -> frozenset[str]:
        return self._closure(c, self.children, self._desc)

    def lineage(self, c: str) -> frozenset[str]:
        return self.ancestors(c) | self.descendants(c)

    def siblings(self, c: str) -> set[str]:
        """Concepts sharing at least one parent with ``c`` (not ``c``)."""
        out = set().union(*(self.children.get(p, set()) for p in self.parents.get(c, ())))
        out.discard(c)
        return out

    def cousins(self, c: str) -> set[str]:
        """Concepts sharing a grandparent with ``c`` that are not its siblings (nor ``c``)."""
        grand = set().union(*(self.parents.get(p, set()) for p in self.parents.get(c, ())))
        out: set[str] = set()
        for g in grand:
            for uncle in self.children.get(g, ()):
                out |= self.children.get(uncle, set())
        return out - self.siblings(c) - {c}

    def breadth_first_depths(self, root: str) -> dict[str, int]:
        """Shortest is-a path length from ``root`` to every concept it reaches."""
        depth = {root: 0}
        frontier = [root]
        while frontier:
            nxt = []
            for t in frontier:
                for c in sorted(self.children.get(t, ())):
                    if c not in depth:
                        depth[c] = depth[t] + 1
                        nxt.append(c)
            frontier = nxt
        return depth


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int) -> IsAGraph:
    return IsAGraph.from_table(read_table(Path(path), "edges", ["child", "parent"]))


def load_graph(edges_path: Path | str, needed_by: str = "") -> IsAGraph:
    """The is-a graph of ``edges.parquet``, built once per file version."""
    path = Path(edges_path)
    if not path.is_file():
        why = f" (needed by {needed_by})" if needed_by else ""
        raise UserError(f"{path}: missing{why}; run dvc repro parse_hpo")
    st = path.stat()
    return _load(str(path.resolve()), st.st_mtime_ns, st.st_size)
