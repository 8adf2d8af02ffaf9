"""Bi-encoder vs bi-encoder + reranker on every query set: MRR / HR@1 / HR@10 (full rank,
pessimistic ties; reranking only reorders the top-k) with bootstrap CIs and the paired
permutation test (hpo_embed.retrieval.metrics), calibration quality and precision/coverage at
the dev thresholds on the held-out (test) queries, and where the reranker loses."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from hpo_embed.retrieval import metrics as rm

METRICS = ("mrr", "hr@1", "hr@10")


def per_query(ranks: np.ndarray) -> dict[str, np.ndarray]:
    r = np.asarray(ranks, dtype=float)
    return {"mrr": np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0), "hr@1": (r == 1).astype(float),
            "hr@10": ((r >= 1) & (r <= 10)).astype(float)}


def set_keys(rr: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(name, rows): held-out per language, held-out pooled, then each external set."""
    out = []
    held = rr[rr["set"] == "heldout"]
    for lang, g in held.groupby("lang", sort=True):
        out.append((f"heldout.{lang}", g))
    if held["lang"].nunique() > 1:
        out.append(("heldout.all", held))
    for name, g in rr[~rr["set"].isin(["heldout", "train", "dev", "dev_eval"])].groupby("set", sort=True):
        out.append((name, g))
    return out


def compare(rr: pd.DataFrame, n_resamples: int, seed: int) -> dict[str, Any]:
    """``{set: {n, biencoder: {metric, metric_ci}, reranked: {...}, diff: {metric: paired_diff},
    wins, losses}}``; wins/losses = queries whose gold rank improved / worsened."""
    out: dict[str, Any] = {}
    for name, g in set_keys(rr):
        bi, re_ = per_query(g["gold_rank"].to_numpy()), per_query(g["rr_rank"].to_numpy())
        entry: dict[str, Any] = {"n": len(g), "biencoder": {}, "reranked": {}, "diff": {}}
        for m in METRICS:
            for side, vals in (("biencoder", bi[m]), ("reranked", re_[m])):
                lo, hi = rm.bootstrap_ci(vals, n_resamples, seed)
                entry[side][m] = float(vals.mean())
                entry[side][f"{m}_ci"] = [lo, hi]
            entry["diff"][m] = rm.paired_diff(re_[m], bi[m], n_resamples, seed)
        entry["wins"] = int((g["rr_rank"] < g["gold_rank"]).sum())
        entry["losses"] = int((g["rr_rank"] > g["gold_rank"]).sum())
        entry["gold_in_top_k"] = float((g["gold_rank"] <= g["cand_ids"].map(len)).mean())
        out[name] = entry
    return out


def failures(rr: pd.DataFrame, min_n: int = 10) -> pd.DataFrame:
    """Per (language, branch of the expected concept) of the held-out + external queries:
    n, MRR bi-encoder / reranked, wins, losses; sorted by MRR change (worst first)."""
    ev = rr[~rr["set"].isin(["train", "dev", "dev_eval"])]
    rows = []
    for (lang, br), g in ev.groupby(["lang", "branch"]):
        if len(g) < min_n:
            continue
        rows.append({"lang": lang, "branch": br, "n": len(g),
                     "mrr_bi": float(per_query(g["gold_rank"].to_numpy())["mrr"].mean()),
                     "mrr_rr": float(per_query(g["rr_rank"].to_numpy())["mrr"].mean()),
                     "wins": int((g["rr_rank"] < g["gold_rank"]).sum()),
                     "losses": int((g["rr_rank"] > g["gold_rank"]).sum())})
    df = pd.DataFrame(rows, columns=["lang", "branch", "n", "mrr_bi", "mrr_rr", "wins", "losses"])
    df["delta"] = df["mrr_rr"] - df["mrr_bi"]
    return df.sort_values("delta").reset_index(drop=True)


def worst_examples(rr: pd.DataFrame, labels: dict[str, str], n: int = 8) -> list[dict[str, Any]]:
    """The held-out / external queries the reranker hurt most (gold pushed furthest down)."""
    ev = rr[~rr["set"].isin(["train", "dev", "dev_eval"])]
    ev = ev[ev["rr_rank"] > ev["gold_rank"]].assign(drop=lambda d: d["rr_rank"] - d["gold_rank"])
    out = []
    for r in ev.sort_values("drop", ascending=False).head(n).itertuples(index=False):
        out.append({"set": r.set, "lang": r.lang, "query": r.query, "gold": labels.get(r.expected[0], r.expected[0]),
                    "rank": f"{r.gold_rank} -> {r.rr_rank}", "reranked_top1": labels.get(r.rr_ids[0], r.rr_ids[0])})
    return out


def _f(x: float | None, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def comparison_table(cmp: dict, side: str) -> list[str]:
    """One row per query set: bi-encoder vs ``side`` (reranked / fused) with the paired Δ."""
    rows = [f"| query set | n | gold in top-k | MRR bi-encoder | MRR {side} | Δ MRR (95% CI) | p | HR@1 bi | "
            f"HR@1 {side} | Δ HR@1 (p) | HR@10 bi | HR@10 {side} | wins / losses |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in cmp.items():
        d, d1 = e["diff"]["mrr"], e["diff"]["hr@1"]
        rows.append(f"| {name} | {e['n']} | {_f(e['gold_in_top_k'], 2)} | {_f(e['biencoder']['mrr'])} | "
                    f"{_f(e['reranked']['mrr'])} | {d['diff']:+.3f} ({d['diff_ci_low']:+.3f} to {d['diff_ci_high']:+.3f}) | "
                    f"{_f(d['p_value'])} | {_f(e['biencoder']['hr@1'])} | {_f(e['reranked']['hr@1'])} | "
                    f"{d1['diff']:+.3f} ({_f(d1['p_value'])}) | {_f(e['biencoder']['hr@10'])} | "
                    f"{_f(e['reranked']['hr@10'])} | {e['wins']} / {e['losses']} |")
    return rows


def fusion_section(fused: dict, fusion: dict) -> list[str]:
    """Score fusion (cosine + w x logit, w chosen on dev) against the bi-encoder alone."""
    grid = ", ".join(f"{w}: {m:.4f}" for w, m in fusion["dev_mrr"].items())
    return ["", f"## Score fusion: bi-encoder cosine + w × cross-encoder logit (w = {fusion['weight']:g})", "",
            f"w chosen on {fusion['chosen_on']} (w = 0 is the bi-encoder alone; the largest w is the cross-encoder's "
            f"order with the cosine breaking ties). Dev MRR per w: {grid}.", "", *comparison_table(fused, "fused")]


def report_markdown(cmp: dict, fail: pd.DataFrame, worst: list[dict], calib: dict, thresholds: dict,
                    labels: dict[str, str], info: dict, fused: dict | None = None) -> str:
    lines = ["# Reranker: bi-encoder vs bi-encoder + cross-encoder", "",
             f"Candidates: the fine-tuned bi-encoder's top-{info['k']} ({info['retrieval']}-vector retrieval); the "
             f"cross-encoder reorders them (documents past k keep their places). MRR / HR over the full rank, "
             f"95 % bootstrap CIs, p = paired permutation test (reranked vs bi-encoder). Held-out sets are capped at "
             f"{info['test_queries']} random queries per language (`rerank.test_queries`).", "",
             *comparison_table(cmp, "reranked")]
    if fused is not None:
        lines += fusion_section(fused, info["fusion"])
    lines += ["", "## Calibration of the reranked top-1 (P(top-1 correct | logit))", "",
              f"Fitted on {calib['dev_queries']} dev queries; ECE with 15 equal-width bins. Test = the held-out "
              "queries above (not used for fitting).", "",
              "| calibrator | ECE dev | Brier dev | ECE test | Brier test |", "|---|---|---|---|---|"]
    for m in ("none", "platt", "isotonic"):
        lines.append(f"| {m if m != 'none' else 'none (sigmoid of the logit)'} | {_f(calib['dev_quality'][m]['ece'])} | "
                     f"{_f(calib['dev_quality'][m]['brier'])} | {_f(calib['test_quality'][m]['ece'])} | "
                     f"{_f(calib['test_quality'][m]['brier'])} |")
    ov = thresholds["test"]["overall"]
    lines += ["", f"## Accepting the top-1 automatically (target precision {calib['target_precision']})", "",
              f"Thresholds on the raw logit, per top-level branch of the predicted concept, chosen on dev; branches "
              f"with fewer than {calib['min_branch_examples']} dev queries use the global threshold. Test overall: "
              f"precision {_f(ov['precision'])}, coverage {_f(ov['coverage'])} ({ov['accepted']} of {ov['n']} accepted).",
              "", "| branch | source | threshold | dev precision | dev coverage | dev n | test precision | test coverage | test n |",
              "|---|---|---|---|---|---|---|---|---|"]
    dev_b = thresholds["dev"]["branches"]
    test_b = thresholds["test"]["branches"]
    g = thresholds["dev"]["global"]
    lines.append(f"| (global) | dev, all | {_f(g['threshold'])} | {_f(g['precision'])} | {_f(g['coverage'])} | "
                 f"{g['n']} | | | |")
    for b in sorted(set(dev_b) | set(test_b)):
        d, t = dev_b.get(b, {}), test_b.get(b, {})
        lines.append(f"| {labels.get(b, b)} ({b}) | {d.get('source', 'global')} | {_f(d.get('threshold'))} | "
                     f"{_f(d.get('precision'))} | {_f(d.get('coverage'))} | {d.get('n', 0)} | {_f(t.get('precision'))} | "
                     f"{_f(t.get('coverage'))} | {t.get('n', 0)} |")
    lines += ["", "## Where the reranker loses", "",
              "Held-out + external queries by language and top-level branch of the expected concept "
              "(groups of >= 10 queries), worst MRR change first.", "",
              "| lang | branch | n | MRR bi | MRR rr | Δ | wins | losses |", "|---|---|---|---|---|---|---|---|"]
    for r in fail.head(12).itertuples(index=False):
        lines.append(f"| {r.lang} | {labels.get(r.branch, r.branch)} | {r.n} | {r.mrr_bi:.3f} | {r.mrr_rr:.3f} | "
                     f"{r.delta:+.3f} | {r.wins} | {r.losses} |")
    if worst:
        lines += ["", "Queries the reranker hurt most:", "", "| set | lang | query | gold | rank bi -> rr | reranked top-1 |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {w['set']} | {w['lang']} | {w['query']} | {w['gold']} | {w['rank']} | {w['reranked_top1']} |"
                  for w in worst]
    return "\n".join(lines) + "\n"
