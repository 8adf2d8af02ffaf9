"""Hard negatives: ontology relatives and model-mined texts behind a false-negative guard
(``mining``), the training rows they are mined for (``anchors``), the mined n-tuple training
set (``dataset``) and the mine stage (``run``). Design and measurements: docs/negatives.md."""
