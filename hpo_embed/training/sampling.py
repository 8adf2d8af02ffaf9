"""Batch composition and negative sampling for the train stage.

``ConceptBatchSampler``: a sentence-transformers batch sampler that never puts two rows
sharing a *key* into one batch. A row's keys are its HPO concept, the concept its
negative was drawn from (if any) and its lower-cased texts, so in-batch negatives are
never the same concept (a false negative) and never the same text. This is stricter
than ``BatchSamplers.NO_DUPLICATES``, which only compares texts.

The order is shuffled per epoch (seed = trainer seed + epoch, identical on every DDP
rank) and *stratified by concept*: the k rows of a concept get sort keys
``(j + u) / k`` (j = their shuffled rank, u uniform), so each concept's rows are spread
evenly over the epoch and conflicts, which are deferred to the next batch, stay rare.

``group_by_length`` (``train.group_by_length``): the stratified order is cut into windows
of ``LENGTH_WINDOW`` batches, each window sorted by the row's longest text (characters),
packed into batches by the same rule, and the batch order shuffled; the collator pads each
batch to its longest text, so far fewer pad tokens are computed (44% -> 8% of the tokens
on the default data; benchmarks/bench_train.py).

Negative samplers (``sample_negatives``), documented in README "train":
- ``random``: a positive text of a uniformly drawn *other* training concept;
- ``sibling``: a positive text of a training concept that shares a parent with the
  anchor's concept (``data/hpo/edges.parquet``); falls back to ``random`` for concepts
  without a sibling in the training set.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from sentence_transformers.base.sampler import DefaultBatchSampler

from hpo_embed.common import UserError
from hpo_embed.ontology.graph import IsAGraph


class ConceptBatchSampler(DefaultBatchSampler):
    """Batches in which no two rows share a key (concept id or text).

    ``keys[i]`` is a sequence of hashable keys for row ``i``; ``keys[i][0]`` is its
    concept and is used for stratification. Pass to the trainer with
    ``concept_batch_sampler(keys)`` (``batch_sampler=`` accepts a callable).
    """

    def __init__(self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None,
                 generator: torch.Generator | None = None, seed: int = 0, *,
                 keys: Sequence[Sequence[str]], group_by_length: bool = False) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        if len(keys) != len(dataset):
            raise ValueError(f"{len(keys)} key rows for a dataset of {len(dataset)} rows")
        self.keys = [tuple(k) for k in keys]
        # The trainer seeds `generator` with args.seed and passes seed=0: honour both.
        self.base_seed = (generator.initial_seed() if generator is not None else 0) + int(seed)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, k in enumerate(self.keys):
            groups[k[0]].append(i)
        self.groups = list(groups.values())
        self.lengths = row_lengths(dataset) if group_by_length else None
        self._cache: tuple[int, list[list[int]]] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng(self.base_seed + epoch)
        n = len(self.keys)
        pos = np.empty(n, dtype=np.float64)
        for rows in self.groups:
            k = len(rows)
            pos[rows] = (rng.permutation(k) + rng.random(k)) / k
        # tie-break identical positions randomly too
        return np.lexsort((rng.random(n), pos))

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        epoch = self.epoch if epoch is None else epoch
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        order = self._order(epoch)
        if self.lengths is None:
            out = self._pack(order)
        else:
            window = LENGTH_WINDOW * self.batch_size
            order = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")]
                                    for c in np.array_split(order, max(1, -(-len(order) // window)))])
            out = self._pack(order)
            rng = np.random.default_rng(self.base_seed + epoch + 7919)
            out = [out[i] for i in rng.permutation(len(out))]
        self._cache = (epoch, out)
        return out

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        """Batches in ``order``, rows whose keys clash with the batch deferred to the next."""
        out: list[list[int]] = []
        deferred: list[int] = []
        stream = iter(order.tolist())
        exhausted = False
        while True:
            batch: list[int] = []
            used: set = set()
            still: list[int] = []
            for i in deferred:
                if len(batch) < self.batch_size and used.isdisjoint(self.keys[i]):
                    batch.append(i)
                    used.update(self.keys[i])
                else:
                    still.append(i)
            while len(batch) < self.batch_size and not exhausted:
                i = next(stream, None)
                if i is None:
                    exhausted = True
                    break
                if used.isdisjoint(self.keys[i]):
                    batch.append(i)
                    used.update(self.keys[i])
                else:
                    still.append(i)
            deferred = still
            if not batch:
                break
            if len(batch) == self.batch_size or not self.drop_last:
                out.append(batch)
            if exhausted and not deferred:
                break
        return out

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()

    def __len__(self) -> int:
        return len(self.batches())


LENGTH_WINDOW = 64   # batches per window sorted by length (group_by_length)


def row_lengths(dataset) -> np.ndarray:
    """Per row, the character length of its longest text column."""
    columns = [c for c in dataset.column_names if c != "label"]
    return np.array([max(len(str(t)) for t in row) for row in zip(*(dataset[c] for c in columns))], dtype=np.int64)


def concept_batch_sampler(keys: Sequence[Sequence[str]], group_by_length: bool = False):
    """The ``batch_sampler=`` argument for SentenceTransformerTrainingArguments."""
    return functools.partial(ConceptBatchSampler, keys=keys, group_by_length=group_by_length)


def row_keys(concepts: Sequence[Sequence[str]], texts: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """Keys per row: its concept ids (first = own concept) then ``"\\0" + text.lower()``."""
    return [tuple(c) + tuple("\0" + t.lower() for t in tx) for c, tx in zip(concepts, texts)]


# --------------------------------------------------------------------------- negatives

def sample_negatives(hpo_ids: Sequence[str], pool: dict[str, list[str]], strategy: str, seed: int,
                     graph: IsAGraph | None = None) -> tuple[list[str], list[str], int]:
    """For each anchor concept, draw a negative concept and one of its texts from ``pool``
    (``{concept: candidate texts}``, the training positives). Returns
    ``(negative_texts, negative_concepts, n_sibling)``: how many came from a sibling."""
    if strategy not in ("random", "sibling"):
        raise ValueError(strategy)
    concepts = sorted(pool)
    if len(concepts) < 2:
        raise UserError("data/pairs/train.parquet: negatives need at least 2 training concepts")
    rng = np.random.default_rng(seed)
    in_pool_sibs: dict[str, list[str]] = {}
    texts, negs, n_sib = [], [], 0
    for c in hpo_ids:
        neg = None
        if strategy == "sibling" and graph is not None:
            if c not in in_pool_sibs:
                in_pool_sibs[c] = sorted(s for s in graph.siblings(c) if s in pool)
            cands = in_pool_sibs[c]
            if cands:
                neg = cands[rng.integers(len(cands))]
                n_sib += 1
        while neg is None or neg == c:
            neg = concepts[rng.integers(len(concepts))]
        cand_texts = pool[neg]
        texts.append(cand_texts[rng.integers(len(cand_texts))])
        negs.append(neg)
    return texts, negs, n_sib
