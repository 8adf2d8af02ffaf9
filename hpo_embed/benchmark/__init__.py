"""The benchmark stage: retrieval quality of base, fine-tuned and INT8 models on held-out
concepts and phentrieve-format sets.

- ``inputs``: paths, the models to score (``ModelSpec``), held-out query sets, pinned files;
- ``score``: per-query scoring, summaries with CIs, paired comparisons, headline, HR@K curves;
- ``report``: reports/benchmark.md;
- ``run``: the stage's computation.
"""
