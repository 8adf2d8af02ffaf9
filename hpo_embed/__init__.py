"""hpo-embed: fine-tuning multilingual sentence embeddings on the Human Phenotype Ontology (the library behind the DVC stages in stages/)."""
