"""Benchmark of the train stage on the real HPO with the embedded defaults (params.yaml).

Uses data/pairs/ when the pairs stage has produced it; otherwise (``--english``, or no
data/pairs) it writes English-only inputs in the pairs contract to a temporary folder:
EXACT synonym -> label pairs of train concepts, English synonyms of dev/test concepts as
queries (10 % / 10 % of concepts by a hash of the id; texts of several concepts dropped).
Then it runs ``python -m stages.train`` in a child process on private output folders and
prints wall time, pairs/s and baseline -> best dev MRR@10 / NDCG@10 / Accuracy@1.
Target (issue 5): the default run within ~15 min on 2 CPU cores, dev metrics moved.

    .venv/bin/python benchmarks/bench_train.py [--english] [-S train.max_train_pairs=3200 ...] [--keep DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent


def english_inputs(terms_path: Path, out: Path) -> None:
    t = pd.read_parquet(terms_path)
    t = t[t["selected"]]

    def split(i: str) -> str:
        h = int(hashlib.sha256(i.encode()).hexdigest(), 16) % 10
        return "dev" if h == 0 else "test" if h == 1 else "train"

    owners: dict[str, set[str]] = {}
    for r in t.itertuples():
        for s in r.synonyms if r.synonyms is not None else []:
            owners.setdefault(s["text"].lower(), set()).add(r.id)
    pairs, queries = [], []
    for r in t.itertuples():
        sp = split(r.id)
        for s in r.synonyms if r.synonyms is not None else []:
            if s["scope"] != "EXACT" or len(owners[s["text"].lower()]) > 1 or s["text"] == r.label:
                continue
            if sp == "train":
                pairs.append(dict(anchor=s["text"], positive=r.label, hpo_id=r.id, pair_type="term_syn",
                                  lang_anchor="en", lang_positive="en", source="official", branch=r.branch,
                                  synonym_type=s["type"]))
            else:
                queries.append(dict(text=s["text"], hpo_id=r.id, lang="en", kind="synonym",
                                    synonym_type=s["type"], source="official", split=sp))
    out.mkdir(parents=True, exist_ok=True)
    p = pd.DataFrame(pairs)
    for name in ("train", "dev", "test"):
        (p if name == "train" else p.iloc[:0]).to_parquet(out / f"{name}.parquet")
    pd.DataFrame(queries).to_parquet(out / "queries.parquet")
    pd.DataFrame({"hpo_id": t["id"], "split": [split(i) for i in t["id"]], "branch": t["branch"]}).to_parquet(
        out / "concepts.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--english", action="store_true", help="generate English-only pairs even if data/pairs exists")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="train.KEY=VALUE (like dvc exp run -S)")
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    pairs = ROOT / "data" / "pairs"
    if a.english or not (pairs / "train.parquet").is_file():
        pairs = work / "pairs"
        english_inputs(ROOT / "data" / "hpo" / "terms.parquet", pairs)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for o in a.overrides:
        key, _, value = o.partition("=")
        section, _, name = key.partition(".")
        if name:
            params[section][name] = yaml.safe_load(value)
        else:
            params[section] = yaml.safe_load(value)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "stages.train", "--params", str(work / "params.yaml"), "--pairs", str(pairs),
           "--out", str(work / "finetuned"), "--checkpoints", str(work / "checkpoints"),
           "--metrics", str(work / "train.json"), "--live", str(work / "dvclive")]
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    m = json.loads((work / "train.json").read_text())
    print(json.dumps({"wall_s": round(time.time() - t0, 1), "pairs": m["pairs"], "steps": m["steps"],
                      "pairs_per_s": m["pairs_per_s"], "train_time_s": m["train_time_s"],
                      "eval_time_s": m["eval_time_s"], "dev": m["dev"], "baseline": m["baseline"],
                      "best": m["best"], "best_step": m["best_step"]}, indent=2))


if __name__ == "__main__":
    main()
