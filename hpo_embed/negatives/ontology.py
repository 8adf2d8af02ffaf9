"""Ontology relatives of a concept from the is-a edges (edges.parquet: child, parent)."""
from __future__ import annotations

from collections import defaultdict

import pandas as pd


class Ontology:
    """Parents, children, siblings (share a parent), cousins (share a grandparent, not a
    sibling) and the lineage (every ancestor and descendant) of each concept."""

    def __init__(self, edges: pd.DataFrame) -> None:
        self.parents: dict[str, set[str]] = defaultdict(set)
        self.children: dict[str, set[str]] = defaultdict(set)
        for c, p in zip(edges["child"], edges["parent"]):
            if c != p:
                self.parents[c].add(p)
                self.children[p].add(c)
        self._anc: dict[str, frozenset[str]] = {}
        self._desc: dict[str, frozenset[str]] = {}

    def ancestors(self, c: str) -> frozenset[str]:
        if c in self._anc:
            return self._anc[c]
        out: set[str] = set()
        stack = list(self.parents.get(c, ()))
        while stack:
            p = stack.pop()
            if p not in out:
                out.add(p)
                stack.extend(self.parents.get(p, ()))
        self._anc[c] = frozenset(out)
        return self._anc[c]

    def descendants(self, c: str) -> frozenset[str]:
        if c in self._desc:
            return self._desc[c]
        out: set[str] = set()
        stack = list(self.children.get(c, ()))
        while stack:
            k = stack.pop()
            if k not in out:
                out.add(k)
                stack.extend(self.children.get(k, ()))
        self._desc[c] = frozenset(out)
        return self._desc[c]

    def lineage(self, c: str) -> frozenset[str]:
        return self.ancestors(c) | self.descendants(c)

    def siblings(self, c: str) -> set[str]:
        out = set().union(*(self.children.get(p, set()) for p in self.parents.get(c, ())))
        out.discard(c)
        return out

    def cousins(self, c: str) -> set[str]:
        grand = set().union(*(self.parents.get(p, set()) for p in self.parents.get(c, ())))
        out: set[str] = set()
        for g in grand:
            for uncle in self.children.get(g, ()):
                out |= self.children.get(uncle, set())
        return out - self.siblings(c) - {c}

    def relatives(self, c: str, relations: list[str], family: bool) -> dict[str, str]:
        """``{concept: relation}`` for the requested relations (first relation wins). Without
        ``family`` the lineage (ancestors/descendants, e.g. a sibling that is also a
        grandchild in the DAG) is left out; with it, parents and children are added."""
        out: dict[str, str] = {}
        if family:
            for r in sorted(self.parents.get(c, ())):
                out.setdefault(r, "parent")
            for r in sorted(self.children.get(c, ())):
                out.setdefault(r, "child")
        for rel in relations:
            for r in sorted(self.siblings(c) if rel == "siblings" else self.cousins(c)):
                out.setdefault(r, rel.rstrip("s"))
        if not family:
            lin = self.lineage(c)
            out = {k: v for k, v in out.items() if k not in lin}
        return out
