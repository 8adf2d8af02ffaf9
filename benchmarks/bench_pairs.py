"""Benchmark of the pairs stage at full scale: wall time and peak memory.

Generates synthetic inputs the size of the HPO phenotypic-abnormality subtree
(``--concepts`` 18,400 by default, 24 top-level branches) with ``--languages`` 8 target
languages (label, definition for ~80 %, 0-3 synonyms, official or machine-translated) as
schema-v1 per-ID files in a temporary folder, then runs the stage in a fresh child
process (interpreter start and imports included) and prints its wall time and peak RSS.
Target (issue 4): under 30 s and under 2 GB on 2 cores.

    .venv/bin/python benchmarks/bench_pairs.py [--concepts N] [--languages K] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LANGS = ["de", "fr", "es", "it", "pt", "nl", "ja", "zh", "cs", "tr", "pl", "ru"]
WORDS = ("abnormal morphology of the left ventricle kidney joint inflammation bone skeletal "
         "muscle seizure cerebral cortex retina lens cornea hand finger toe skin nail hair tooth "
         "heart valve artery vein liver spleen ear hearing vision gait tremor reduced increased "
         "dysplasia aplasia hypoplasia agenesis atrophy hypertrophy").split()


def _phrase(rng: random.Random, lo: int, hi: int, tag: str) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) + f" {tag}"


def generate(folder: Path, n_concepts: int, languages: list[str], seed: int = 0) -> Path:
    """Write ``terms.parquet`` and ``translations/HP_*.json`` under ``folder``."""
    import pandas as pd
    from tqdm import tqdm

    from hpo_embed.translation.schema import SCHEMA_VERSION, dumps, translation_path

    rng = random.Random(seed)
    tr = folder / "translations"
    tr.mkdir(parents=True, exist_ok=True)
    branches = [f"HP:{9000000 + b:07d}" for b in range(24)]
    rows = []
    for i in tqdm(range(n_concepts), desc="bench: writing per-ID files", unit="file", mininterval=1.0):
        hpo_id = f"HP:{1000000 + i:07d}"
        label = _phrase(rng, 2, 5, str(i)).capitalize()
        definition = _phrase(rng, 12, 30, f"def {i}") + "." if rng.random() < 0.8 else None
        syns = [{"text": _phrase(rng, 2, 5, f"syn {i}.{k}"),
                 "scope": rng.choice(["EXACT", "EXACT", "RELATED"]),
                 "type": "layperson" if rng.random() < 0.2 else None} for k in range(rng.randint(0, 3))]
        langs = {}
        for lang in languages:
            src = "official" if rng.random() < 0.5 else "mt:google"

            def t(text, _src=src, _lang=lang):
                return {"text": f"{_lang} {text}", "source": _src, "status": "OFFICIAL" if _src == "official" else "MACHINE",
                        "translator": None, "source_text": text}
            langs[lang] = {"label": t(label),
                           "definition": t(definition) if definition else None,
                           "synonyms": [{**t(s["text"]), "scope": s["scope"], "type": s["type"]} for s in syns]}
        doc = {"schema_version": SCHEMA_VERSION, "id": hpo_id,
               "en": {"label": label, "definition": definition, "synonyms": syns}, "languages": langs}
        translation_path(tr, hpo_id).write_text(dumps(doc), encoding="utf-8")
        rows.append({"id": hpo_id, "label": label, "definition": definition, "synonyms": syns,
                     "branch": rng.choice(branches), "selected": True})
    pd.DataFrame(rows).to_parquet(folder / "terms.parquet")
    return folder


def child(folder: Path, languages: list[str]) -> None:
    from stages.pairs import run
    from hpo_embed.params import PairsParams

    m = run(PairsParams(), languages, translations_dir=folder / "translations",
            terms_path=folder / "terms.parquet", out_dir=folder / "pairs",
            metrics_path=folder / "pairs.json", progress=False)
    print(json.dumps({"concepts": m["concepts"]["total"],
                      "pairs": {s: m["pairs"][s]["total"] for s in ("train", "dev", "test")},
                      "queries": sum(m["queries"][s]["total"] for s in ("dev", "test"))}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", type=int, default=18_400)
    ap.add_argument("--languages", type=int, default=8)
    ap.add_argument("--keep", type=Path, help="generate into this folder and keep it")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    langs = LANGS[:args.languages]
    if args.child:
        child(args.child, langs)
        return
    with tempfile.TemporaryDirectory(prefix="bench_pairs_") as tmp:
        folder = args.keep or Path(tmp)
        t0 = time.perf_counter()
        generate(folder, args.concepts, langs)
        print(f"generated {args.concepts} per-ID files with {len(langs)} languages in "
              f"{time.perf_counter() - t0:.1f} s ({folder})")
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, __file__, "--languages", str(args.languages), "--child", str(folder)],
                           cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"stage failed:\n{r.stderr}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"pairs stage: {summary['concepts']} concepts, {len(langs)} languages + en, "
              f"pairs train/dev/test {summary['pairs']['train']}/{summary['pairs']['dev']}/{summary['pairs']['test']}, "
              f"{summary['queries']} queries")
        print(f"wall time {wall:.1f} s (target < 30 s), peak RSS {peak_mb:.0f} MB (target < 2048 MB), "
              f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
