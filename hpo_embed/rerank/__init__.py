"""Cross-encoder reranking of the bi-encoder's top-k candidates (docs/reranker.md).

- ``candidates``: the bi-encoder's top-k candidate lists (the rerank_candidates stage);
- ``model``: CrossEncoder examples, training, scoring, reranking;
- ``fit``: the rerank_train stage;
- ``calibration``: ECE, Brier, Platt / isotonic calibration, per-branch thresholds;
- ``calibrate``: the calibrate stage;
- ``evaluate`` and ``benchmark``: bi-encoder vs reranked, the rerank_benchmark stage;
- ``export``: the ONNX INT8 reranker (the rerank_export stage).
"""
