"""The benchmark stage's inputs: paths, the models to score, the held-out query sets, the
pinned phentrieve files."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpo_embed.common import UserError
from hpo_embed.embedding import model_hash
from hpo_embed.models.loader import load_sentence_transformer, resolve_model
from hpo_embed.ontology.source import download
from hpo_embed.pairs.external_sets import QuerySet, safe_name
from hpo_embed.params import BenchmarkParams
from hpo_embed.schemas import read_table

RETRIEVALS = ("single", "multi")


SPLIT_ORDER = ("train", "dev", "test", "bench")


PIPELINE_MODELS = ("base", "finetuned", "int8")


INT8_FILE = "onnx/model.onnx"   # the quantize stage's published folder: its only ONNX file is the INT8 model


@dataclass
class Paths:
    """The benchmark stage's inputs and outputs (its dvc.yaml deps and outs)."""
    terms: Path
    edges: Path
    queries: Path
    concepts: Path
    finetuned: Path
    onnx: Path
    per_query: Path     # per-query ranks and scores (Parquet)
    curves: Path        # HR@K files, one per query set
    cache: Path         # corpus embeddings (not a DVC output)
    metrics: Path       # headline figures
    reports: Path       # folder for benchmark.md and benchmark.json
    calibration: Path | None = None   # the score calibration (JSON); None = not written
    base: Path | None = None   # the base_model stage's folder; None = train.base_model as given


@dataclass
class ModelSpec:
    name: str
    path: str                  # folder or hub id
    kwargs: dict[str, Any] = field(default_factory=dict)   # SentenceTransformer(...) kwargs
    max_seq_length: int | None = None                        # override of the model's own
    source: str | None = None                                # as written in params (labels)

    def load(self):
        """The SentenceTransformer, loaded as phentrieve loads it (its own token limit unless
        ``benchmark.max_seq_length`` overrides it)."""
        return load_sentence_transformer(self.path, f"model {self.name} ({self.path})", self.max_seq_length,
                                         **self.kwargs)

    def cache_key(self) -> str:
        """The embedding cache's identity of this model: its files and load options."""
        onnx_file = self.kwargs.get("model_kwargs", {}).get("file_name")
        if onnx_file is None and self.kwargs.get("backend") == "onnx":
            onnx_file = "onnx/model.onnx"   # what sentence-transformers loads without a file name
        return model_hash(self.path, [self.kwargs, self.max_seq_length], onnx_file)


def load_heldout(queries_path: Path, corpus_ids: set[str], languages: list[str]) -> list[QuerySet]:
    """Test-split queries, one QuerySet per language (+ ``all`` pooled when several)."""
    df = read_table(queries_path, "queries")
    df = df[df["split"] == "test"].reset_index(drop=True)
    bad = ~df["hpo_id"].isin(corpus_ids)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{queries_path}: test row {i}: {df['hpo_id'][i]} is not in the corpus "
                        f"({int(bad.sum())} such rows); data/hpo and data/pairs are out of sync")
    present = sorted(df["lang"].unique())
    if languages:
        absent = [lang for lang in languages if lang not in present]
        if absent:
            raise UserError(f"params.yaml: benchmark.languages: no test queries for {', '.join(absent)} in "
                            f"{queries_path} (present: {', '.join(present) or 'none'})")
        present = [lang for lang in present if lang in languages]
    df = df[df["lang"].isin(present)]
    sets = []
    for lang in present:
        sub = df[df["lang"] == lang]
        sets.append(QuerySet("heldout", lang, sub["text"].tolist(), [[h] for h in sub["hpo_id"]],
                             {"n_queries": len(sub), "n_concepts": int(sub["hpo_id"].nunique())}))
    if len(present) > 1:   # the languages' queries one after the other (scored once, see run)
        sets.append(QuerySet("heldout", "all", [t for s in sets for t in s.texts], [e for s in sets for e in s.expected],
                             {"n_queries": len(df), "n_concepts": int(df["hpo_id"].nunique())}))
    return sets


def load_dev(queries_path: Path, corpus_ids: set[str], n: int, seed: int) -> QuerySet | None:
    """A random sample of ``n`` dev-split queries (every language; the score calibration's
    data), or None when ``n`` is 0 or there are none."""
    df = read_table(queries_path, "queries")
    df = df[(df["split"] == "dev") & df["hpo_id"].isin(corpus_ids)].drop_duplicates(["text", "hpo_id"])
    if not n or df.empty:
        return None
    df = df.sample(n=min(n, len(df)), random_state=seed).sort_values(["lang", "text"])
    return QuerySet("dev", None, df["text"].tolist(), [[h] for h in df["hpo_id"]],
                    {"n_queries": len(df), "n_concepts": int(df["hpo_id"].nunique())})


def model_specs(bp: BenchmarkParams, base_model: str, paths: Paths) -> list[ModelSpec]:
    specs: list[ModelSpec] = []
    for name in bp.models:
        if name == "base":
            if paths.base is None:
                specs.append(ModelSpec("base", resolve_model(base_model, "train.base_model")))
            elif (paths.base / "modules.json").is_file():
                specs.append(ModelSpec("base", str(paths.base)))
            else:
                raise UserError(f"{paths.base}: no base model; run the base_model stage first (dvc repro base_model)")
        elif name == "finetuned":
            if not (paths.finetuned / "modules.json").is_file():
                raise UserError(f"{paths.finetuned}: no fine-tuned model; run the train stage first "
                                "(or drop 'finetuned' from benchmark.models)")
            specs.append(ModelSpec("finetuned", str(paths.finetuned)))
        elif name == "int8":
            if not (paths.onnx / INT8_FILE).is_file():
                raise UserError(f"{paths.onnx / INT8_FILE}: no int8 model; run the quantize stage first "
                                "(or drop 'int8' from benchmark.models)")
            # loaded exactly as the CPU server does: the plain ONNX backend, no file name
            specs.append(ModelSpec("int8", str(paths.onnx), {"backend": "onnx"}))
    for i, entry in enumerate(bp.extra_models):
        name, sep, spec = entry.partition("=")
        if not sep:
            name, spec = safe_name(entry.rstrip("/").rsplit("/", 1)[-1].removeprefix("pkg:")), entry
        name = safe_name(name)
        if not name or name in {s.name for s in specs} or name in PIPELINE_MODELS:
            raise UserError(f"params.yaml: benchmark.extra_models[{i}]: name {name!r} is empty or already used "
                            "(write it as name=spec)")
        specs.append(ModelSpec(name, resolve_model(spec.strip(), f"benchmark.extra_models[{i}]"),
                               source=spec.strip()))
    for s in specs:
        s.max_seq_length = bp.max_seq_length
    return specs


def case_splits(qs: QuerySet, split_of: dict[str, str]) -> list[str]:
    """Per case: ``train`` if any expected concept is a training concept, else the first of
    dev, test, bench that holds one (``unknown`` without concepts.parquet)."""
    out = []
    for e in qs.expected:
        splits = {split_of.get(h, "unknown") for h in e}
        out.append(next((s for s in SPLIT_ORDER if s in splits), "unknown"))
    return out


# The phentrieve German benchmark files (berntpopp/phentrieve, MIT), pinned by commit
# and checksum; `make fetch-benchmarks` downloads them into data/external/phentrieve-benchmarks/german, which the
# default `benchmark.external_sets` pattern reads when present.
PHENTRIEVE_COMMIT = "04476bcc9ec73cb06b61217957005935f0b0dec7"


PHENTRIEVE_URL = (f"https://raw.githubusercontent.com/berntpopp/phentrieve/{PHENTRIEVE_COMMIT}"
                  "/tests/data/benchmarks/german/")


PHENTRIEVE_FILES = {
    "70cases_gemini_v1.json": "ca0461de0abc6c8e6980f7ba183ec70a4aca5767ef0196a25535790e051ba3fc",
    "70cases_o3_v1.json": "b31441a4ec3e3389faac23dacdb8fee664d88fde4d56f655774c590159b57315",
    "small_v1.json": "30d161bd06d2fc01bfb7621c19f653513ba8401f7aa8b27d556e6d3d1c63b656",
    "tiny_v1.json": "30d161bd06d2fc01bfb7621c19f653513ba8401f7aa8b27d556e6d3d1c63b656",
}


def fetch_phentrieve(dest: Path, base_url: str = PHENTRIEVE_URL) -> list[Path]:
    return [download(base_url + name, dest, sha, param="make fetch-benchmarks",
                     sha_param="make fetch-benchmarks") for name, sha in PHENTRIEVE_FILES.items()]
