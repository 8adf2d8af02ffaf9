"""What a retrieval mode searches: the vectors of the HPO concepts and who owns them.

Shared by the benchmark stage and the reranker's candidate lists, so both search the
same index and drop the same self-matching queries.

- ``single``: one text per concept, its English document (``retrieval.corpus.document``
  in the given format; ``label`` by default);
- ``multi``: one text per English label and per synonym of ``scopes`` (EXACT by
  default), a concept's score being the maximum over its vectors (phentrieve's
  ``label_synonyms_max``). A query equal (NFC, whitespace collapsed, case-folded) to an
  indexed text of its own expected concept would find itself: ``self_matches`` marks it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from hpo_embed.common import case_key
from hpo_embed.retrieval.corpus import document


@dataclass
class Index:
    """``texts[j]`` is a vector of concept ``corpus_ids[vec_concept[j]]``; ``own[i]`` holds
    the case keys of concept i's English label and synonyms of the index's scopes."""
    mode: str
    corpus_ids: list[str]
    texts: list[str]
    vec_concept: torch.Tensor
    own: list[set[str]]


def build_index(terms: pd.DataFrame, mode: str, corpus_format: str = "label",
                scopes: tuple[str, ...] | list[str] = ("EXACT",)) -> Index:
    """The index of every row of ``terms``, in id order."""
    scopes = set(scopes)
    texts, owner, own, ids = [], [], [], []
    for ci, r in enumerate(terms.sort_values("id").to_dict("records")):
        ids.append(r["id"])
        syns = r["synonyms"] if r.get("synonyms") is not None else []
        names = [r["label"]] + [s["text"] for s in syns if s["scope"] in scopes]
        keys = [k for k in dict.fromkeys(case_key(n) for n in names) if k]
        own.append(set(keys))
        if mode == "single":
            texts.append(document(r, corpus_format))
            owner.append(ci)
            continue
        seen: set[str] = set()
        for n in names:
            k = case_key(n)
            if k and k not in seen:
                seen.add(k)
                texts.append(n)
                owner.append(ci)
    return Index(mode, ids, texts, torch.as_tensor(owner, dtype=torch.long), own)


def self_matches(index: Index, texts: list[str], expected: list[list[str]], always: bool = False) -> np.ndarray:
    """True where a query is an indexed text of one of its expected concepts: multi mode
    only (single-mode queries are all kept), or ``always`` (training queries)."""
    if index.mode != "multi" and not always:
        return np.zeros(len(texts), dtype=bool)
    pos = {c: i for i, c in enumerate(index.corpus_ids)}
    return np.asarray([any(case_key(t) in index.own[pos[h]] for h in e if h in pos)
                       for t, e in zip(texts, expected)], dtype=bool)
