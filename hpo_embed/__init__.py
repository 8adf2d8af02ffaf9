"""hpo-embed library code: the pipeline's logic, imported by the thin stage scripts."""
