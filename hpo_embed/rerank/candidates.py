"""The bi-encoder's candidate lists: every query's top-k concepts with their scores and the
full (pessimistic) rank of its best expected concept, the inputs of the reranker stages.

Retrieval is the benchmark's (hpo_embed.retrieval.metrics): ``single`` = one vector per
concept (its English label), ``multi`` = one vector per English label and EXACT synonym, a
concept's score the maximum over its vectors. In ``multi`` mode a query that is an indexed
text of its own expected concept would find itself; it is dropped (the benchmark's rule).
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from hpo_embed.retrieval import metrics as rm

QUERY_BATCH = 256
COLUMNS = ("set", "lang", "query", "expected", "branch", "gold_rank", "cand_ids", "cand_scores")


def case_key(text: str) -> str:
    """NFC, whitespace-collapsed, case-folded text (the benchmark's self-match key)."""
    return " ".join(unicodedata.normalize("NFC", text).split()).casefold()


@dataclass
class Index:
    """``texts[j]`` is a vector of concept ``corpus_ids[vec_concept[j]]``; ``own[i]`` the
    case keys of concept i's English label and EXACT synonyms."""
    mode: str
    corpus_ids: list[str]
    texts: list[str]
    vec_concept: torch.Tensor
    own: list[set[str]]


def build_index(terms: pd.DataFrame, mode: str) -> Index:
    """Index of the selected concepts of ``terms`` (id order): labels (single) or labels +
    EXACT synonyms (multi)."""
    rows = terms.sort_values("id").to_dict("records")
    ids, texts, owner, own = [], [], [], []
    for ci, r in enumerate(rows):
        ids.append(r["id"])
        syns = r.get("synonyms") if r.get("synonyms") is not None else []
        names = [r["label"]] + [s["text"] for s in syns if s["scope"] == "EXACT"]
        keys: set[str] = set()
        for n in names if mode == "multi" else names[:1]:
            k = case_key(n)
            if k and k not in keys:
                keys.add(k)
                texts.append(n)
                owner.append(ci)
        own.append(keys | {case_key(n) for n in names})
    return Index(mode, ids, texts, torch.as_tensor(owner, dtype=torch.long), own)


def self_matches(index: Index, texts: list[str], expected: list[list[str]], always: bool = False) -> np.ndarray:
    """True where a query is the English label or an EXACT synonym of one of its expected
    concepts: multi mode (or ``always``, for training queries) only; single-mode queries are
    all kept, as in the benchmark."""
    if index.mode != "multi" and not always:
        return np.zeros(len(texts), dtype=bool)
    pos = {c: i for i, c in enumerate(index.corpus_ids)}
    return np.asarray([any(case_key(t) in index.own[pos[h]] for h in e if h in pos)
                       for t, e in zip(texts, expected)], dtype=bool)


def encode(model, texts: list[str], batch_size: int = 64, desc: str = "encode") -> torch.Tensor:
    """L2-normalised embeddings by a plain ``model.encode`` (the model's saved prompt applies,
    as in the benchmark)."""
    if not texts:
        return torch.zeros((0, model.get_sentence_embedding_dimension()))
    emb = model.encode(texts, batch_size=batch_size, show_progress_bar=len(texts) > batch_size,
                       convert_to_numpy=True, normalize_embeddings=True)
    return torch.from_numpy(np.asarray(emb, dtype=np.float32))


def retrieve(index: Index, corpus_emb: torch.Tensor, query_emb: torch.Tensor, expected: list[list[str]],
             k: int) -> tuple[list[int], list[list[str]], list[list[float]]]:
    """Per query: the full rank of its best expected concept (pessimistic ties), the top-k
    concept ids and their scores."""
    pos = {c: i for i, c in enumerate(index.corpus_ids)}
    ranks, ids, scores = [], [], []
    n = len(index.corpus_ids)
    for start in tqdm(range(0, len(expected), QUERY_BATCH), desc="retrieve", unit="batch", leave=False):
        q = query_emb[start:start + QUERY_BATCH]
        s = q @ corpus_emb.T
        if index.mode == "multi":
            s = rm.concept_max(s, index.vec_concept, n)
        exp = [[pos[h] for h in e] for e in expected[start:start + QUERY_BATCH]]
        ranks += [p[0] for p in rm.expected_positions(s, exp)]
        top_i, top_s = rm.top_k(s, k)
        ids += [[index.corpus_ids[j] for j in row] for row in top_i.tolist()]
        scores += [[round(float(x), 6) for x in row] for row in top_s.tolist()]
    return ranks, ids, scores


def candidate_table(index: Index, corpus_emb: torch.Tensor, query_emb: torch.Tensor, meta: pd.DataFrame,
                    k: int, branch_of: dict[str, str]) -> pd.DataFrame:
    """``meta`` (columns set, lang, query, expected) + branch (of the first expected concept),
    gold_rank, cand_ids, cand_scores."""
    expected = [list(e) for e in meta["expected"]]
    ranks, ids, scores = retrieve(index, corpus_emb, query_emb, expected, k)
    out = meta[["set", "lang", "query"]].reset_index(drop=True).copy()
    out["expected"] = expected
    out["branch"] = [branch_of.get(e[0], "") for e in expected]
    out["gold_rank"] = np.asarray(ranks, dtype=np.int64)
    out["cand_ids"] = ids
    out["cand_scores"] = scores
    return out[list(COLUMNS)]


def sample_rows(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    return df.sample(n=n, random_state=seed) if n is not None and len(df) > n else df


def sample_by_lang(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows, languages as balanced as they allow: each language gets up to ``n //
    languages`` rows, the rest is filled at random (German has far fewer translations than
    Spanish and would otherwise be a handful of queries)."""
    if len(df) <= n:
        return df.sample(frac=1.0, random_state=seed)
    langs = sorted(df["lang"].unique())
    share = n // len(langs)
    first = pd.concat([sample_rows(df[df["lang"] == lang], share, seed) for lang in langs])
    rest = df.drop(first.index)
    fill = rest.sample(n=n - len(first), random_state=seed) if n > len(first) else rest.iloc[:0]
    return pd.concat([first, fill]).sample(frac=1.0, random_state=seed)


def cached_encode(model, texts: list[str], cache_dir, model_files: list, batch_size: int, desc: str) -> torch.Tensor:
    """``encode`` with a float32 .npy cache keyed by the model's files and the texts (the
    corpus is the expensive part on a CPU; a rerun after a params change reuses it)."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    for f in sorted(model_files):
        h.update(Path(f).name.encode())
        h.update(hashlib.sha256(Path(f).read_bytes()).digest())
    h.update("\x00".join(texts).encode())
    cache = Path(cache_dir) / f"{h.hexdigest()[:24]}.npy"
    if cache.is_file():
        arr = np.load(cache, allow_pickle=False)
        if arr.shape[0] == len(texts):
            return torch.from_numpy(arr)
    emb = encode(model, texts, batch_size, desc)
    cache.parent.mkdir(parents=True, exist_ok=True)
    for old in cache.parent.glob("*.npy"):
        old.unlink()
    tmp = cache.with_name(f".{cache.name}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, emb.numpy(), allow_pickle=False)
    tmp.replace(cache)
    return emb


TRAIN_PAIR_TYPES = ("term_syn", "xl_term")   # short label/synonym texts (no definitions)


def train_queries(train_pairs: pd.DataFrame, split_of: dict[str, str], index: Index, n: int, seed: int) -> pd.DataFrame:
    """Training queries: label/synonym texts (every language) of TRAIN-split concepts from the
    pairs' anchors and positives, minus the concept's own English label/EXACT synonyms
    (trivial), deduplicated, ``n`` sampled (languages balanced, ``sample_by_lang``). Columns set='train', lang, query, expected."""
    df = train_pairs[train_pairs["pair_type"].isin(TRAIN_PAIR_TYPES)] if "pair_type" in train_pairs else train_pairs
    parts = [df[["anchor", "lang_anchor", "hpo_id"]].set_axis(["query", "lang", "hpo_id"], axis=1),
             df[["positive", "lang_positive", "hpo_id"]].set_axis(["query", "lang", "hpo_id"], axis=1)]
    q = pd.concat(parts, ignore_index=True).drop_duplicates(["query", "hpo_id"])
    q = q[q["hpo_id"].map(split_of) == "train"]
    q = q[q["hpo_id"].isin(set(index.corpus_ids))].sort_values(["hpo_id", "query"]).reset_index(drop=True)
    q["expected"] = [[h] for h in q["hpo_id"]]
    q = q[~self_matches(index, q["query"].tolist(), q["expected"].tolist(), always=True)]
    q = sample_by_lang(q, n, seed)
    return q.assign(set="train")[["set", "lang", "query", "expected"]].reset_index(drop=True)


def dev_queries(queries: pd.DataFrame, index: Index, n: int, seed: int) -> pd.DataFrame:
    """Two disjoint random samples of ``n`` dev-split queries (self-matches dropped; languages
    balanced, ``sample_by_lang``):
    ``dev_eval`` (checkpoint selection while training) and ``dev`` (calibration)."""
    d = queries[queries["split"] == "dev"].drop_duplicates(["text", "hpo_id"])
    d = d[d["hpo_id"].isin(set(index.corpus_ids))].sort_values(["hpo_id", "text"]).reset_index(drop=True)
    exp = [[h] for h in d["hpo_id"]]
    d = d.assign(expected=exp)[~self_matches(index, d["text"].tolist(), exp)]
    d = sample_by_lang(d, 2 * n, seed).reset_index(drop=True)
    d["set"] = ["dev_eval" if i % 2 else "dev" for i in range(len(d))]
    return d.rename(columns={"text": "query"})[["set", "lang", "query", "expected"]]


def heldout_queries(queries: pd.DataFrame, index: Index, n_per_lang: int | None, seed: int) -> pd.DataFrame:
    """Test-split queries per language (self-matches dropped), ``n_per_lang`` sampled each."""
    t = queries[queries["split"] == "test"]
    t = t[t["hpo_id"].isin(set(index.corpus_ids))].sort_values(["lang", "hpo_id", "text"]).reset_index(drop=True)
    exp = [[h] for h in t["hpo_id"]]
    t = t.assign(expected=exp)[~self_matches(index, t["text"].tolist(), exp)]
    parts = [sample_rows(g, n_per_lang, seed) for _, g in t.groupby("lang", sort=True)]
    out = pd.concat(parts, ignore_index=True) if parts else t.iloc[:0]
    return out.assign(set="heldout").rename(columns={"text": "query"})[["set", "lang", "query", "expected"]]


def external_queries(sets: list, index: Index, lang: str = "de") -> pd.DataFrame:
    """phentrieve-format sets (hpo_embed.pairs.external_sets.QuerySet; the pinned files are German:
    ``lang``), self-matches dropped; a set with the same cases as an earlier one is skipped."""
    rows, seen = [], set()
    for qs in sets:
        key = (tuple(qs.texts), tuple(map(tuple, qs.expected)))
        if key in seen:
            continue
        seen.add(key)
        keep = ~self_matches(index, qs.texts, qs.expected)
        rows += [{"set": qs.set, "lang": lang, "query": t, "expected": list(e)}
                 for t, e, k in zip(qs.texts, qs.expected, keep) if k]
    return pd.DataFrame(rows, columns=["set", "lang", "query", "expected"])
