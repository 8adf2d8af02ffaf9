"""The quantize stage: ONNX export and the published INT8 CPU model.

- ``onnx``: export, quantisation calls, loading, the published folder;
- ``candidates``: the INT8 variants of ``method: auto`` and building them;
- ``measure``: speed, memory and retrieval quality against PyTorch fp32;
- ``gate``: the quality gate and the choice;
- ``report``: reports/quantize.md and the headline;
- ``quantize``: the stage's computation and ``--select``.
"""
