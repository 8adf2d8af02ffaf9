"""The pairs stage: per-concept texts (``texts``), the split and hold-out (``splits``), pairs
and queries (``generate``), the stage (``build``); the dev evaluation set (``dev_set``) and
phentrieve-format benchmark files (``external_sets``)."""
