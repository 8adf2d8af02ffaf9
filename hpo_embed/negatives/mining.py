"""Mining hard negatives: corpus, false-negative guard, batched exact search, selection.

Why not ``sentence_transformers.util.mine_hard_negatives``: it knows texts, not concepts.
Here a negative must not be *any* text of the anchor's concept (any language, any
synonym), nor a text identical to one of them, nor (by default) a text of an ancestor or
descendant; those are masked *before* the top-k, so they never use up the rank range, and
the removals are counted per reason. The search is exact: anchors x corpus in blocks of a
torch matmul + topk (6,400 x 14,643 x 384 is ~36 GFLOP, about a second on 2 cores).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hpo_embed.embedding import cache_file, encode_cached
from hpo_embed.ontology.graph import IsAGraph
from hpo_embed.params import MineParams

log = logging.getLogger("hpo_embed.negatives")

GUARD_REASONS = ("same_concept", "same_text", "family")


def norm(text: str) -> str:
    """The identity of a text for the guard: stripped, whitespace collapsed, case-folded."""
    return " ".join(str(text).split()).casefold()


def relatives(graph: IsAGraph, c: str, relations: list[str], family: bool) -> dict[str, str]:
    """``{concept: relation}`` of ``c`` for the requested relations (siblings, cousins; first
    relation wins). Without ``family`` the lineage (ancestors/descendants, e.g. a sibling
    that is also a grandchild in the DAG) is left out; with it, parents and children are added."""
    out: dict[str, str] = {}
    if family:
        for r in sorted(graph.parents.get(c, ())):
            out.setdefault(r, "parent")
        for r in sorted(graph.children.get(c, ())):
            out.setdefault(r, "child")
    for rel in relations:
        for r in sorted(graph.siblings(c) if rel == "siblings" else graph.cousins(c)):
            out.setdefault(r, rel.rstrip("s"))
    if not family:
        lineage = graph.lineage(c)
        out = {k: v for k, v in out.items() if k not in lineage}
    return out


@dataclass
class Corpus:
    """The texts negatives are drawn from, each with its concept."""
    texts: list[str]
    concepts: list[str]
    is_label: np.ndarray
    norms: list[str] = field(init=False)
    by_concept: dict[str, np.ndarray] = field(init=False)
    by_norm: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.norms = [norm(t) for t in self.texts]
        bc, bn = defaultdict(list), defaultdict(list)
        for i, (c, n) in enumerate(zip(self.concepts, self.norms)):
            bc[c].append(i)
            bn[n].append(i)
        self.by_concept = {k: np.asarray(v, dtype=np.int64) for k, v in bc.items()}
        self.by_norm = {k: np.asarray(v, dtype=np.int64) for k, v in bn.items()}
        self.labels = np.flatnonzero(self.is_label)

    def __len__(self) -> int:
        return len(self.texts)


def mining_corpus(terms: pd.DataFrame, concepts: set[str], fmt: str = "label") -> Corpus:
    """English label (``fmt="label"``) and EXACT synonyms (``"label_synonyms"``, one text
    each) of the concepts in ``concepts`` (the train split), in id order."""
    texts, ids, is_label = [], [], []
    rows = terms[terms["id"].isin(concepts)].sort_values("id")
    for cid, label, syns in zip(rows["id"], rows["label"], rows["synonyms"]):
        texts.append(str(label))
        ids.append(cid)
        is_label.append(True)
        if fmt == "label_synonyms":
            seen = {norm(label)}
            for s in (syns if syns is not None else []):
                if s["scope"] == "EXACT" and norm(s["text"]) not in seen:
                    seen.add(norm(s["text"]))
                    texts.append(str(s["text"]))
                    ids.append(cid)
                    is_label.append(False)
    return Corpus(texts, ids, np.asarray(is_label, dtype=bool))


def known_texts(terms: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, set[str]]:
    """Every known text of each concept, normalised: label and synonyms (any scope) from
    terms.parquet, plus both sides of every pair of data/pairs/train.parquet (all pair
    types and languages: the official and machine translations the pipeline uses)."""
    out: dict[str, set[str]] = defaultdict(set)
    for cid, label, syns in zip(terms["id"], terms["label"], terms["synonyms"]):
        out[cid].add(norm(label))
        for s in (syns if syns is not None else []):
            out[cid].add(norm(s["text"]))
    for col in ("anchor", "positive"):
        for cid, t in zip(pairs["hpo_id"], pairs[col]):
            out[cid].add(norm(t))
    return dict(out)


def guard_indices(anchor: str, positive: str, concept: str, corpus: Corpus, texts: dict[str, set[str]],
                  ontology: IsAGraph | None, family_allowed: bool) -> dict[str, np.ndarray]:
    """Corpus indices that may never be a negative of this row, by reason: ``same_concept``
    (a text of the anchor's concept), ``same_text`` (another concept's text identical to the
    anchor, the positive or any text of the anchor's concept) and ``family`` (ancestors and
    descendants, unless ``family_allowed``)."""
    empty = np.zeros(0, dtype=np.int64)
    same = corpus.by_concept.get(concept, empty)
    names = set(texts.get(concept, ())) | {norm(anchor), norm(positive)}
    hits = [corpus.by_norm[n] for n in names if n in corpus.by_norm]
    text_idx = np.setdiff1d(np.concatenate(hits), same) if hits else empty
    fam = empty
    if ontology is not None and not family_allowed:
        idx = [corpus.by_concept[r] for r in ontology.lineage(concept) if r in corpus.by_concept]
        fam = np.setdiff1d(np.concatenate(idx), np.concatenate([same, text_idx])) if idx else empty
    return {"same_concept": same, "same_text": text_idx, "family": fam}


def margin_ok(scores: np.ndarray, pos: float, relative: float | None, absolute: float | None) -> np.ndarray:
    """True where a candidate's score is low enough not to be a likely false negative:
    <= (1 - relative) x pos (TopK-PercPos) and <= pos - absolute."""
    ok = np.ones(len(scores), dtype=bool)
    if relative is not None:
        ok &= scores <= (1.0 - relative) * pos
    if absolute is not None:
        ok &= scores <= pos - absolute
    return ok


def model_candidates(scores, pos_scores: np.ndarray, guards: list[dict[str, np.ndarray]], p: MineParams,
                     block: int = 1024) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, int]]:
    """Exact search over an anchors x corpus score source.

    ``scores`` is an (A, N) array/tensor, or a callable ``(start, stop) -> (stop-start, N)
    tensor`` computing a block. Guarded entries and entries above the margin threshold
    (likely false negatives; NV-Retriever's TopK-PercPos: the top-k *below* the threshold)
    are masked before the top-``range_max``; the first ``range_min`` survivors are then
    skipped. Returns per anchor the candidate indices (best first) and their scores, and
    counts: ``guard_<reason>`` and ``margin`` = masked texts that would otherwise have been
    among the top ``range_max`` (score >= the range_max-th survivor's; a guarded text above
    the margin counts as guarded)."""
    import torch

    get = scores if callable(scores) else (lambda a, b: torch.as_tensor(np.asarray(scores[a:b]), dtype=torch.float32))
    n_anchor = len(guards)
    counts = {f"guard_{r}": 0 for r in GUARD_REASONS} | {"margin": 0}
    cand_idx: list[np.ndarray] = []
    cand_sc: list[np.ndarray] = []
    for start in range(0, n_anchor, block):
        stop = min(start + block, n_anchor)
        raw = get(start, stop).to(torch.float32)
        s = raw.clone()
        guarded = torch.zeros_like(s, dtype=torch.bool)
        for j, g in enumerate(guards[start:stop]):
            for r in GUARD_REASONS:
                if len(g[r]):
                    guarded[j, torch.as_tensor(g[r])] = True
        thr = torch.full((stop - start, 1), float("inf"))
        pos = torch.as_tensor(np.asarray(pos_scores[start:stop], dtype=np.float32)).unsqueeze(1)
        if p.relative_margin is not None:
            thr = torch.minimum(thr, (1.0 - p.relative_margin) * pos)
        if p.absolute_margin is not None:
            thr = torch.minimum(thr, pos - p.absolute_margin)
        over = (s > thr) & ~guarded
        s[guarded | over] = float("-inf")
        k = min(p.range_max, s.shape[1])
        val, idx = torch.topk(s, k, dim=1)
        val, idx = val.numpy(), idx.numpy()
        raw_np, over_np = raw.numpy(), over.numpy()
        for j in range(stop - start):
            g = guards[start + j]
            finite = np.isfinite(val[j])
            kth = val[j][finite][-1] if finite.sum() == k else -np.inf
            for r in GUARD_REASONS:
                if len(g[r]):
                    counts[f"guard_{r}"] += int((raw_np[j, g[r]] >= kth).sum())
            counts["margin"] += int((raw_np[j, over_np[j]] >= kth).sum())
            cand_idx.append(idx[j][finite][p.range_min:])
            cand_sc.append(val[j][finite][p.range_min:])
    return cand_idx, cand_sc, counts


def ontology_candidates(concepts: list[str], guards: list[dict[str, np.ndarray]], corpus: Corpus,
                        ontology: IsAGraph, p: MineParams, score_fn=None,
                        pos_scores: np.ndarray | None = None) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Per anchor: corpus indices of its relatives' texts (relations of ``p``) minus the
    guard; with ``score_fn(row, idx) -> scores`` sorted best first and margin-filtered."""
    counts = {f"guard_{r}": 0 for r in GUARD_REASONS} | {"margin": 0, "no_relative": 0}
    out_idx, out_sc = [], []
    cache: dict[str, np.ndarray] = {}
    for row, c in enumerate(concepts):
        if c not in cache:
            rel = relatives(ontology, c, list(p.ontology_relations), p.ontology_family)
            parts = [corpus.by_concept[r] for r in sorted(rel) if r in corpus.by_concept]
            cache[c] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        idx = cache[c]
        g = guards[row]
        for r in GUARD_REASONS:
            hit = np.isin(idx, g[r])
            counts[f"guard_{r}"] += int(hit.sum())
            idx = idx[~hit]
        sc = np.full(len(idx), np.nan, dtype=np.float32)
        if score_fn is not None and len(idx):
            sc = score_fn(row, idx)
            ok = margin_ok(sc, float(pos_scores[row]), p.relative_margin, p.absolute_margin)
            counts["margin"] += int((~ok).sum())
            idx, sc = idx[ok], sc[ok]
            order = np.argsort(-sc, kind="stable")
            idx, sc = idx[order], sc[order]
        counts["no_relative"] += int(len(idx) == 0)
        out_idx.append(idx)
        out_sc.append(sc)
    return out_idx, out_sc, counts


def choose(per_source: dict[str, tuple[list[np.ndarray], list[np.ndarray]]], corpus: Corpus, n: int,
           sampling: str, rng: np.random.Generator) -> tuple[list[list[tuple[int, str, float]]], dict[str, int]]:
    """Pick ``n`` negatives per anchor from the sources' candidate lists. Sources take turns
    (anchor i starts with source i mod #sources, so with n=1 the anchors alternate), each
    giving its best (``top``) or a uniformly drawn (``random``) remaining candidate; a text
    already picked for the anchor is skipped. Returns ``[(index, source, score)]`` per anchor."""
    names = list(per_source)
    n_anchor = len(next(iter(per_source.values()))[0]) if names else 0
    picks: list[list[tuple[int, str, float]]] = []
    used = {s: 0 for s in names}
    for a in range(n_anchor):
        order_src = names[a % len(names):] + names[:a % len(names)]
        cand = {s: per_source[s][0][a] for s in order_src}
        score = {s: per_source[s][1][a] for s in order_src}
        # visiting order of each source's candidates: best first, or a random permutation
        visit = {s: (np.arange(len(cand[s])) if sampling == "top" else rng.permutation(len(cand[s])))
                 for s in order_src}
        pos = dict.fromkeys(order_src, 0)
        chosen: list[tuple[int, str, float]] = []
        seen: set[str] = set()
        while len(chosen) < n and any(pos[s] < len(visit[s]) for s in order_src):
            for s in order_src:
                while pos[s] < len(visit[s]) and len(chosen) < n:
                    o = visit[s][pos[s]]
                    pos[s] += 1
                    i = int(cand[s][o])
                    if corpus.norms[i] not in seen:
                        seen.add(corpus.norms[i])
                        chosen.append((i, s, float(score[s][o])))
                        used[s] += 1
                        break
        picks.append(chosen)
    return picks, used


def easy_negatives(guards: list[dict[str, np.ndarray]], corpus: Corpus, n: int, rng: np.random.Generator,
                   exclude: list[set[str]] | None = None, minimum: int | None = None,
                   relaxed: list[int] | None = None) -> list[list[int]]:
    """``n`` random labels of other concepts per anchor, outside the guard (and not a text in
    ``exclude[i]``): the easy negatives mixed in against forgetting and used as a fill.

    Random draws first; an anchor they leave short (a near-root concept guards almost every
    label: its descendants) takes the rest from the labels its guard leaves; an anchor whose
    family is every label (the root of the ontology) takes other concepts' labels with only
    its own texts guarded, as in-batch negatives do, and is appended to ``relaxed``."""
    labels = corpus.labels
    out = []
    for a, g in enumerate(guards):
        texts = set(exclude[a]) if exclude else set()
        got: list[int] = []

        def take(i: int) -> None:
            if len(got) < n and corpus.norms[i] not in texts:
                got.append(i)
                texts.add(corpus.norms[i])
        bad = set(np.concatenate([g[r] for r in GUARD_REASONS]).tolist())
        for _ in range(50 * n + 50):
            if len(got) == n:
                break
            i = int(labels[rng.integers(len(labels))])
            if i not in bad:
                take(i)
        need = n if minimum is None else minimum
        for reasons in (GUARD_REASONS, ("same_concept", "same_text")):
            if len(got) >= (n if reasons == GUARD_REASONS else need):
                break
            if reasons != GUARD_REASONS and relaxed is not None:
                relaxed.append(a)
            bad = set(np.concatenate([g[r] for r in reasons]).tolist())
            for i in rng.permutation([i for i in labels.tolist() if i not in bad and i not in got]):
                take(int(i))
        if len(got) < need:
            raise ValueError(f"too few easy negatives for anchor {a}: corpus too small")
        out.append(got)
    return out


def mine(rows: pd.DataFrame, corpus: Corpus, texts: dict[str, set[str]], ontology: IsAGraph | None,
         p: MineParams, model=None, corpus_emb: np.ndarray | None = None, round_no: int = 1,
         cache: Path | None = None, model_key: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Hard (``negative_k``) and easy (``easy_k``) negatives for every row of ``rows``
    (columns anchor, positive, hpo_id), in row order, with ``negative_k_id``,
    ``negative_k_source`` (ontology | model | fill) and ``negative_k_score`` (NaN when
    no model was used); and a report of counts and seconds."""
    t0 = time.time()
    anchors, positives, ids = (rows[c].astype(str).tolist() for c in ("anchor", "positive", "hpo_id"))
    rng = np.random.default_rng([p.seed, round_no])
    guards = [guard_indices(a, q, c, corpus, texts, ontology, p.ontology_family)
              for a, q, c in zip(anchors, positives, ids)]
    need_model = "model" in p.sources or p.sampling == "top" or (
        p.relative_margin is not None or p.absolute_margin is not None)
    if need_model and model is None:
        raise ValueError("mining with these params needs a model")
    timing = {"guard_s": round(time.time() - t0, 2), "encode_s": 0.0, "search_s": 0.0}
    a_emb = pos = None
    n_encoded = 0
    if need_model:
        t = time.time()
        corpus_emb, a_emb, pos, n_encoded = embed_rows(model, corpus, anchors, positives, corpus_emb, p.batch_size,
                                                       cache, model_key)
        timing["encode_s"] = round(time.time() - t, 2)
    t = time.time()
    per_source: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    counts: dict[str, dict] = {}
    for src in p.sources:
        if src == "model":
            ct = torch.from_numpy(corpus_emb)
            at = torch.from_numpy(a_emb)
            idx, sc, cnt = model_candidates(lambda s, e: at[s:e] @ ct.T, pos, guards, p)
        else:
            if ontology is None:
                raise ValueError("the ontology source needs the ontology")
            score_fn = (lambda r, ix: corpus_emb[ix] @ a_emb[r]) if a_emb is not None else None
            idx, sc, cnt = ontology_candidates(ids, guards, corpus, ontology, p, score_fn, pos)
        per_source[src] = (idx, sc)
        counts[src] = cnt
    picks, used = choose(per_source, corpus, p.num_negatives, p.sampling, rng) if per_source else \
        ([[] for _ in anchors], {})
    # the first n: the easy columns; the rest: spares to fill anchors short of hard candidates
    relaxed: list[int] = []   # anchors (the root) with no label outside their family
    easy = easy_negatives(guards, corpus, 2 * p.num_negatives, rng, minimum=p.num_negatives, relaxed=relaxed)
    filled = 0
    for a, chosen in enumerate(picks):   # too few candidates: fill with easy ones, counted
        spare = [i for i in easy[a] if all(corpus.norms[i] != corpus.norms[j] for j, _, _ in chosen)]
        while len(chosen) < p.num_negatives:
            chosen.append((spare.pop(0), "fill", float("nan")))
            filled += 1
    timing["search_s"] = round(time.time() - t, 2)
    df = negatives_table(rows, picks, easy, corpus, p.num_negatives, a_emb, corpus_emb, pos, round_no)
    n_neg = len(anchors) * p.num_negatives
    report = {
        "round": round_no, "anchors": len(anchors), "corpus_texts": len(corpus), "encoded_texts": n_encoded,
        "negatives_per_anchor": p.num_negatives, "negatives": n_neg,
        "by_source": {s: used.get(s, 0) for s in p.sources} | {"fill": filled},
        "guard_removed": {r: sum(c.get(f"guard_{r}", 0) for c in counts.values()) for r in GUARD_REASONS},
        "margin_removed": sum(c.get("margin", 0) for c in counts.values()),
        "easy_family_relaxed": len(relaxed),
        "per_source_counts": counts, "seconds": timing | {"total_s": round(time.time() - t0, 2)},
    }
    if pos is not None:
        neg_sc = df[[f"negative_{k + 1}_score" for k in range(p.num_negatives)]].to_numpy()
        report["mean_positive_score"] = round(float(pos.mean()), 4)
        report["mean_negative_score"] = round(float(np.nanmean(neg_sc)), 4)
    return df, report


def embed_rows(model, corpus: Corpus, anchors: list[str], positives: list[str], corpus_emb: np.ndarray | None,
               batch_size: int, cache: Path | None, model_key: str | None):
    """(corpus, anchor embeddings, positive cosine per row, texts encoded). Anchors and
    positives that are corpus texts (term_syn anchors, xl_term positives are English labels)
    reuse the corpus embedding; the rest is encoded once, deduplicated."""
    def embed(texts: list[str], what: str) -> np.ndarray:
        return encode_cached(model, texts, cache_file(cache, model_key, texts, "mine") if model_key else None,
                             batch_size, f"mine: {what}")
    n_encoded = 0
    if corpus_emb is None:
        corpus_emb, n_encoded = embed(corpus.texts, "corpus"), len(corpus)
    text_row = {tx: i for i, tx in enumerate(corpus.texts)}
    missing = sorted({x for x in anchors + positives if x not in text_row})
    extra = embed(missing, "anchors") if missing else np.zeros((0, corpus_emb.shape[1]), np.float32)
    a_emb = _lookup(anchors, text_row, corpus_emb, missing, extra)
    q_emb = _lookup(positives, text_row, corpus_emb, missing, extra)
    return corpus_emb, a_emb, np.einsum("ij,ij->i", a_emb, q_emb), n_encoded + len(missing)


def negatives_table(rows: pd.DataFrame, picks, easy, corpus: Corpus, n: int, a_emb, corpus_emb, pos,
                    round_no: int) -> pd.DataFrame:
    """The rows with their hard (``negative_k``) and easy (``easy_k``) negatives."""
    out = {c: rows[c].astype(str).tolist() for c in ("anchor", "positive", "hpo_id")}
    for k in range(n):
        out[f"negative_{k + 1}"] = [corpus.texts[c[k][0]] for c in picks]
        out[f"negative_{k + 1}_id"] = [corpus.concepts[c[k][0]] for c in picks]
        out[f"negative_{k + 1}_source"] = [c[k][1] for c in picks]
        out[f"negative_{k + 1}_score"] = np.asarray(
            [c[k][2] if not np.isnan(c[k][2]) or a_emb is None else float(a_emb[a] @ corpus_emb[c[k][0]])
             for a, c in enumerate(picks)], dtype=np.float32)
        out[f"easy_{k + 1}"] = [corpus.texts[e[k]] for e in easy]
        out[f"easy_{k + 1}_id"] = [corpus.concepts[e[k]] for e in easy]
    out["positive_score"] = pos.astype(np.float32) if pos is not None else np.full(len(picks), np.nan, np.float32)
    df = pd.DataFrame(out)
    df["round"] = round_no
    return df


def _lookup(positives, text_row, corpus_emb, missing, extra):
    where = {q: i for i, q in enumerate(missing)}
    return np.stack([corpus_emb[text_row[q]] if q in text_row else extra[where[q]] for q in positives])
