"""hpo-embed pipeline stages. Each DVC stage is one module run as ``python -m stages.<name>``."""
