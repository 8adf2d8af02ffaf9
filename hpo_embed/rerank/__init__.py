"""Cross-encoder reranking of the bi-encoder's top-k candidates (issue 18).

- ``params``: ``RerankParams``, the ``rerank:`` section of params.yaml;
- ``candidates``: the bi-encoder's top-k candidate lists (multi- or single-vector);
- ``examples``: training examples (train-split concepts only);
- ``model``: CrossEncoder training (CrossEncoderTrainer), resume, reranking;
- ``calibration``: ECE, Brier, Platt / isotonic calibration, per-branch thresholds,
  calibration.json;
- ``evaluate``: bi-encoder vs bi-encoder + reranker, the report;
- ``export``: ONNX INT8 export of the reranker and its agreement with PyTorch.

Functions take data as arguments (no paths from params, no argv); docs/reranker.md.
"""
