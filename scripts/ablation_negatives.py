"""The hard-negative ablation (issue 15), measured by the pipeline itself.

Five settings on the embedded profile, same step budget (train.max_train_pairs rows, the
same batch size, so the same number of steps): in-batch negatives only / ontology
relatives / model-mined / mined + ontology / iterative (2 rounds). Each is one
``dvc exp run`` (mine -> train -> quantize -> benchmark rerun); its reports are copied to
reports/ablation_negatives/<setting>/. ``--table`` then writes the README table (MRR and
HR@1 with 95% CIs of the fine-tuned model, multi-vector, on the held-out German, French,
Spanish test concepts and the phentrieve files) between the
``<!-- negatives-ablation:start -->`` / ``end`` markers.

    python scripts/ablation_negatives.py --run      # about 5 x 20 min on 2 CPU cores
    python scripts/ablation_negatives.py --table    # README table from the saved reports
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "reports" / "ablation_negatives"
SETTINGS = {   # name -> (title, dvc exp run -S overrides)
    "in_batch": ("in-batch only", ["train.negatives=none"]),
    "ontology": ("ontology (siblings + cousins, random)",
                 ["train.negatives=mined", "mine.sources=[ontology]", "mine.sampling=random"]),
    "mined": ("model-mined (base model, TopK-PercPos 95%)", ["train.negatives=mined", "mine.sources=[model]"]),
    "mined_ontology": ("mined + ontology", ["train.negatives=mined", "mine.sources=[ontology,model]"]),
    "iterative": ("iterative, 2 rounds (mined + ontology, 2 hard : 1 easy)",
                  ["train.negatives=mined", "mine.sources=[ontology,model]", "mine.rounds=2",
                   "mine.easy_fraction=0.34"]),
}
COPY = ("reports/benchmark.json", "reports/train.json", "reports/mine.json", "metrics/mine.json")
MARK = ("<!-- negatives-ablation:start -->", "<!-- negatives-ablation:end -->")


def run(names: list[str]) -> None:
    for name in names:
        _, overrides = SETTINGS[name]
        cmd = ["dvc", "exp", "run", "-n", f"neg-{name}".replace("_", "-")] + [x for o in overrides for x in ("-S", o)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
        dest = OUT / name
        dest.mkdir(parents=True, exist_ok=True)
        for f in COPY:
            if (ROOT / f).is_file():
                shutil.copy(ROOT / f, dest / Path(f).name.replace(".json", f".{Path(f).parent.name}.json"))


def fmt(rep: dict, key: str, metric: str) -> str:
    v = rep.get(f"{key}.{metric}")
    lo, hi = rep.get(f"{key}.{metric}_ci_low"), rep.get(f"{key}.{metric}_ci_high")
    if v is None:
        return "n/a"
    return f"{v:.3f} ({lo:.3f}-{hi:.3f})" if lo is not None else f"{v:.3f}"


def table(mode: str = "multi") -> str:
    reps = {n: json.loads((OUT / n / "benchmark.reports.json").read_text())
            for n in SETTINGS if (OUT / n / "benchmark.reports.json").is_file()}
    if not reps:
        sys.exit(f"no saved reports under {OUT}; run with --run first")
    any_rep = next(iter(reps.values()))
    sets = [f"heldout.{lang}" for lang in ("de", "fr", "es") if f"{mode}.heldout.{lang}.finetuned.mrr" in any_rep]
    sets += sorted({".".join(k.split(".")[1:3]) for k in any_rep
                    if k.startswith(f"{mode}.phentrieve.") and k.endswith(".finetuned.mrr")})
    head = "| setting | " + " | ".join(s.replace("heldout.", "held-out ").replace("phentrieve.", "") for s in sets) + " |"
    lines = [f"MRR / HR@1 of the fine-tuned model ({mode}-vector), 95% bootstrap CIs; same step budget.", "",
             head, "|---|" + "---|" * len(sets)]
    for n, rep in reps.items():
        cells = [f"{fmt(rep, f'{mode}.{s}.finetuned', 'mrr')} / {fmt(rep, f'{mode}.{s}.finetuned', 'hr@1')}"
                 for s in sets]
        lines.append(f"| {SETTINGS[n][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(text: str) -> None:
    readme = ROOT / "README.md"
    body = readme.read_text(encoding="utf-8")
    block = f"{MARK[0]}\n{text}\n{MARK[1]}"
    if MARK[0] in body:
        body = re.sub(re.escape(MARK[0]) + ".*?" + re.escape(MARK[1]), lambda _: block, body, flags=re.S)
    else:
        body += f"\n{block}\n"
    readme.write_text(body, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--only", nargs="*", choices=list(SETTINGS), default=list(SETTINGS))
    a = ap.parse_args()
    if a.run:
        run(a.only)
    if a.table or a.run:
        t = table()
        write_readme(t)
        print(t)


if __name__ == "__main__":
    main()
