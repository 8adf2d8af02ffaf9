"""Hard negatives (issue 15): ontology relatives and model-mined texts behind a
false-negative guard, the n-tuple training set, the losses that use it and the
two-round iterative driver. Design and measurements: docs/negatives.md."""
