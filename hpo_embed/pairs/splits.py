"""The split by concept (hashed within each top-level branch) and the hold-out of the external
benchmark sets' concepts and case texts."""
from __future__ import annotations

import hashlib

import pandas as pd

from hpo_embed.common import ROOT, case_key, log
from hpo_embed.pairs.external_sets import external_files, load_external_set

SPLITS = ("train", "dev", "test")


BENCH = "bench"     # concepts of the held-out external benchmark sets


NO_BRANCH = "none"


def _hash_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode("utf-8")).hexdigest()


def assign_splits(concepts: pd.DataFrame, dev_fraction: float, test_fraction: float,
                  seed: int) -> pd.DataFrame:
    """``concepts`` (hpo_id, branch) -> (hpo_id, split, branch), sorted by hpo_id.

    Stratified by branch: in each branch, concepts in seeded-hash order; the first
    ``round(n * test_fraction)`` are test, the next ``round(n * dev_fraction)`` dev.
    """
    df = concepts[["hpo_id", "branch"]].copy()
    df["branch"] = df["branch"].fillna(NO_BRANCH)
    df["_h"] = [_hash_key(seed, i) for i in df["hpo_id"]]
    df = df.sort_values(["branch", "_h"], kind="stable")
    rank = df.groupby("branch").cumcount()
    n = df.groupby("branch")["hpo_id"].transform("size")
    n_test = (n * test_fraction).round().astype(int)
    n_dev = (n * dev_fraction).round().astype(int)
    df["split"] = "train"
    df.loc[rank < n_test + n_dev, "split"] = "dev"
    df.loc[rank < n_test, "split"] = "test"
    return df.sort_values("hpo_id")[["hpo_id", "split", "branch"]].reset_index(drop=True)


def holdout_cases(entries: list[str], all_terms: pd.DataFrame) -> tuple[set[str], set[str], list[dict]]:
    """``(concept ids, casefolded case texts, per-file info)`` of the phentrieve-format
    files ``entries`` (globs allowed), parsed exactly as the benchmark stage parses them."""
    if not entries:
        return set(), set(), []

    selected = set(all_terms.loc[all_terms["selected"], "id"])
    replaced = ({i: r for i, r in zip(all_terms["id"], all_terms["replaced_by"]) if r}
                if "replaced_by" in all_terms.columns else {})
    ids: set[str] = set()
    texts: set[str] = set()
    files = []
    for name, path in external_files(entries):
        qs = load_external_set(path, selected, replaced)
        ids.update(h for e in qs.expected for h in e)
        texts.update(case_key(t) for t in qs.texts)
        shown = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else name
        files.append({"file": shown, "cases": len(qs.texts), "concepts": len({h for e in qs.expected for h in e})})
    return ids, texts, files


def apply_holdout(concepts: pd.DataFrame, held: set[str]) -> pd.DataFrame:
    """Move the held-out concepts to the ``bench`` split (whatever their hash split was)."""
    concepts = concepts.copy()
    concepts.loc[concepts["hpo_id"].isin(held), "split"] = BENCH
    return concepts


def holdout_files(params) -> list[str]:
    """``pairs.holdout_sets`` resolved (null = the files of ``benchmark.external_sets``)."""
    holdout = params.pairs.holdout_sets
    if holdout is None:
        holdout = params.benchmark.external_sets
    if not holdout:
        log.warning("pairs.holdout_sets is empty: benchmark concepts are trained on (release model); "
                    "their benchmark scores are not held-out scores")
    return holdout
