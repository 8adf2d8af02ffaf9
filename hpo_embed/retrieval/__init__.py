"""Retrieval shared by every stage that scores: the concept documents (``corpus``), the
single/multi-vector index (``index``) and the metrics (``metrics``)."""
