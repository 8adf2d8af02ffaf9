"""Stage quantize: ``models/finetuned`` -> ``models/onnx/`` (the published CPU model: the
INT8 variant that is fastest on this machine while passing a quality gate, as the folder's
only ONNX file) + ``models/onnx-build/`` (the ONNX fp32 export, every candidate, the
measurement state) + ``metrics/quantize.json`` (headline) + ``reports/quantize.md``/``.json``
(the candidate table).

Steps (all with the real libraries, no hand-rolled graph surgery):
1. export the SentenceTransformer to ONNX with the sentence-transformers ONNX backend
   (Optimum underneath) and save the whole SentenceTransformer folder (modules.json,
   pooling, normalisation, tokenizer), so pooling and normalisation stay identical;
2. ``quantize.method: auto`` (default) builds every ``quantize.candidates`` entry of
   ``CANDIDATES`` into ``onnx/candidates/<name>.onnx``: ORT transformer fusions (Optimum
   ``ORTOptimizer`` O2: attention, GELU, skip-LayerNorm) + dynamic per-channel MatMul INT8;
   the same with the embedding Gather kept fp32; the same with the MatMuls that a
   per-layer sensitivity pass (``matmul_sensitivity``) finds most hurt by INT8 kept fp32;
   static QDQ calibrated on HPO texts of every configured language; MatMulNBits 8-bit
   (blocks of 32, int8 compute). A fixed ``method`` (dynamic | matmul_nbits | static)
   builds just that one;
3. measures, interleaved and against PyTorch fp32 in the same run, the production shapes:
   sentences/s at ``batch_size`` (32) and ``index_batch_size`` (indexing) and batch-1
   latency p50/p95; and the quality on held-out queries: full-rank MRR (pessimistic ties)
   and HR@1 minus ONNX fp32, with paired bootstrap CIs;
4. publishes the fastest candidate (batch-32 sentences/s) with MRR delta >=
   ``gate_mrr_delta`` and HR@1 delta >= ``gate_hr1_delta``; if none passes, the
   best-quality one, flagged (``gate_passed: false``, a warning). The published folder is
   the SentenceTransformer folder (tokenizer, pooling, normalisation) with the chosen
   INT8 graph as ``onnx/model.onnx`` and no other ONNX file, so the plain
   ``SentenceTransformer("models/onnx", backend="onnx")`` loads the INT8 model (what the
   8 GB CPU server copies). The fp32 export and the candidates stay in the build folder.

``python -m stages.quantize --select`` re-measures the already built candidates on the
machine it runs on (e.g. the production server) and re-publishes its own choice.

Both folders are built in temporary siblings and renamed into place, so an interrupted
run never leaves a half-written one.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hpo_embed.common import ROOT, UserError, atomic_write_text, log, publish_dir, write_json
from hpo_embed.hardware import cpu_info, encoder_flops, native_bf16, peak_flops
from hpo_embed.models.loader import known_good_tokenizer, load_sentence_transformer
from hpo_embed.params import QuantizeParams

FP32_FILE = "onnx/model.onnx"        # in the build folder: the plain fp32 export
PUBLISHED_FILE = "onnx/model.onnx"   # in the published folder: the chosen INT8 graph, the only ONNX file
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
BF16_ROW = "pytorch_bf16"   # measured beside the candidates where the CPU has native bf16; never published


# --------------------------------------------------------------------------- loading

def _check_model_folder(path: Path, what: str) -> None:
    if not path.exists():
        raise UserError(f"{what}: {path}: no such model folder; run the train stage first")
    if not path.is_dir():
        raise UserError(f"{what}: {path}: not a folder")
    if not (path / "modules.json").is_file():
        raise UserError(f"{what}: {path}: not a SentenceTransformer folder (no modules.json)")


def ort_session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


def load_torch(path: Path, threads: int):
    import torch

    torch.set_num_threads(threads)
    return load_sentence_transformer(path, str(path), device="cpu", local_files_only=True)


def load_onnx(folder: Path, file_name: str, threads: int):
    """The stage's own output, loaded exactly as downstream stages load it."""

    if not (folder / file_name).is_file():
        raise UserError(f"{folder / file_name}: missing ONNX file")
    return load_sentence_transformer(
        folder, str(folder / file_name), backend="onnx", device="cpu", local_files_only=True,
        model_kwargs={"file_name": file_name, "provider": "CPUExecutionProvider",
                      "session_options": ort_session_options(threads)})


# --------------------------------------------------------------------------- export

def export_fp32(src: Path, dst: Path) -> None:
    """Export ``src`` (a PyTorch SentenceTransformer folder) to an ONNX SentenceTransformer
    folder ``dst`` with ``onnx/model.onnx`` (plain export, no optimisation)."""

    _check_model_folder(src, "params.yaml: quantize.model")
    model = load_sentence_transformer(src, str(src), backend="onnx", device="cpu", local_files_only=True,
                                      model_kwargs={"export": True, "provider": "CPUExecutionProvider"})
    model.save(str(dst))
    if not (dst / FP32_FILE).is_file():
        raise RuntimeError(f"ONNX export did not write {dst / FP32_FILE}")


def _hf_config(folder: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(folder))


def optimize_onnx(folder: Path, src_file: str, dst_file: str, level: str) -> dict[str, int]:
    """Graph optimisation/fusion with Optimum's ORTOptimizer (``level``: O1/O2/O3).
    Returns the fused-operator counts."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    config = getattr(AutoOptimizationConfig, level)()
    optimizer = ORTOptimizer([folder / src_file], config=_hf_config(folder))
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        optimizer.optimize(config, scratch, file_suffix="opt")
        os.replace(Path(scratch) / (Path(src_file).stem + "_opt.onnx"), folder / dst_file)
    return ORTOptimizer.get_fused_operators(folder / dst_file)


def node_names(onnx_path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node]


def resolve_exclusions(onnx_path: Path, patterns: list[str]) -> list[str]:
    """Expand ``quantize.exclude_nodes`` (fnmatch patterns on node names) against the graph;
    a pattern that matches nothing is an error (it would silently quantize everything)."""
    if not patterns:
        return []
    names = node_names(onnx_path)
    out: list[str] = []
    for i, pat in enumerate(patterns):
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise UserError(f"params.yaml: quantize.exclude_nodes[{i}]: {pat!r} matches no node of "
                            f"{onnx_path.name} (e.g. {', '.join(names[:3])})")
        out += [h for h in hits if h not in out]
    return out


def quantization_config(p: QuantizeParams, nodes_to_exclude: list[str]):
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = getattr(AutoQuantizationConfig, p.preset)(
        is_static=False, per_channel=p.per_channel,
        operators_to_quantize=list(p.operators), nodes_to_exclude=nodes_to_exclude)
    # the avx512_vnni / arm64 presets have no reduce_range argument (VNNI/ARM need none);
    # set it on the config so that it is an explicit, measurable choice everywhere
    return dataclasses.replace(config, reduce_range=p.reduce_range)


def infer_shapes(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = SymbolicShapeInference.infer_shapes(onnx.load(str(src)), auto_merge=True)
    onnx.save(model, str(dst))


def quantize_onnx(folder: Path, src_file: str, dst_file: str, p: QuantizeParams,
                  calibration: list[dict[str, np.ndarray]] | None = None,
                  keep_fp32: list[str] = (), typed: Path | None = None) -> list[str]:
    """INT8 ``folder/src_file`` -> ``folder/dst_file``; returns the node names kept fp32.

    ``quantize.method``:
    - ``dynamic``: Optimum's ORTQuantizer (onnxruntime dynamic quantization,
      QOperator MatMulInteger/QAttention/...): weights int8, activations quantized to uint8
      per tensor at run time;
    - ``matmul_nbits``: the MatMuls with constant weights become onnxruntime's
      ``MatMulNBits`` (8-bit weights in blocks of ``quantize.block_size`` with their own
      scale; ``accuracy_level`` 4 = int8 compute with activations quantized per block, not
      per tensor), the other operators (embedding Gather, fused Attention) go through the
      dynamic ORTQuantizer as above;
    - ``static``: onnxruntime ``quantize_static`` in QDQ format, activation ranges (uint8,
      per tensor, MinMax) calibrated on ``calibration`` (model feeds of HPO texts), weights
      int8 per channel; ORT fuses the QDQ pairs into integer kernels at load time.
    ``keep_fp32``: node names kept fp32 in addition to ``quantize.exclude_nodes``;
    ``typed``: ``src_file`` after ``infer_shapes`` when already computed (read only).
    """
    from optimum.onnxruntime import ORTQuantizer

    excluded = resolve_exclusions(folder / src_file, list(p.exclude_nodes))
    excluded += [n for n in keep_fp32 if n not in excluded]
    nbits = p.method == "matmul_nbits" and "MatMul" in p.operators
    static = p.method == "static"
    dynamic_ops = [] if static else [o for o in p.operators if not (nbits and o == "MatMul")]
    (folder / dst_file).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        # fused contrib ops (Attention, SkipLayerNormalization ...) have no ONNX shape
        # function; ONNX Runtime's symbolic shape inference types their outputs so that the
        # quantizer can see that e.g. the MatMul after Attention is float
        current = typed
        if current is None:
            current = Path(scratch) / "typed.onnx"
            infer_shapes(folder / src_file, current)
        if static:
            if not calibration:
                raise ValueError("method static needs calibration feeds")
            from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

            class Reader:  # onnxruntime.quantization.CalibrationDataReader protocol
                def __init__(self) -> None:
                    self.it = iter(calibration)

                def get_next(self):
                    return next(self.it, None)

            out = Path(scratch) / "typed_static.onnx"
            quantize_static(current, out, Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=[o for o in p.operators if o != "Attention"],
                            per_channel=p.per_channel, reduce_range=p.reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
            current = out
        if dynamic_ops:
            qconfig = quantization_config(p.model_copy(update={"operators": dynamic_ops}), excluded)
            ORTQuantizer(current, config=_hf_config(folder)).quantize(qconfig, scratch, file_suffix="int8")
            current = Path(scratch) / f"{current.stem}_int8.onnx"  # ORTQuantizer's output name
        if nbits:
            import onnx
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(onnx.load(str(current)), bits=8, block_size=p.block_size,
                                             is_symmetric=True, accuracy_level=p.accuracy_level,
                                             nodes_to_exclude=excluded, op_types_to_quantize=("MatMul",))
            quantizer.process()
            current = Path(scratch) / "typed_nbits.onnx"
            onnx.save(quantizer.model.model, str(current))
        if current == typed:  # nothing quantized: never move the caller's file
            shutil.copyfile(current, folder / dst_file)
        else:
            os.replace(current, folder / dst_file)
    return excluded


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp(out: Path) -> list[Path]:
    """Remove the ``.<out>.tmp-<pid>-*`` / ``.<out>.old-<pid>`` siblings that a killed run
    left behind (a run that is still alive keeps its own); return what was removed."""
    removed = []
    for p in sorted(out.parent.glob(f".{out.name}.tmp-*")) + sorted(out.parent.glob(f".{out.name}.old-*")):
        m = re.match(rf"^\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)", p.name)
        if m and int(m.group(1)) != os.getpid() and _pid_alive(int(m.group(1))):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    if removed:
        log.info("removed %d temporary folder(s) of an interrupted run: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def default_build_dir(out: Path) -> Path:
    """Where the fp32 export and the candidates of ``out`` live when no folder is given."""
    return out.with_name(f"{out.name}-build")


def write_release(build: Path, int8_file: str, dst: Path) -> None:
    """The published folder ``dst``: the build folder's SentenceTransformer files (config,
    tokenizer, pooling, normalisation; no ONNX file) plus ``build/int8_file`` as
    ``onnx/model.onnx``."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(build, dst, ignore=lambda d, names: ["onnx"] if Path(d) == build else [])
    (dst / PUBLISHED_FILE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(build / int8_file, dst / PUBLISHED_FILE)


def _temp_sibling(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    shutil.rmtree(tmp)
    return tmp


# --------------------------------------------------------------------------- inputs

def measurement_texts(terms, n: int, seed: int, translations: Path | None) -> list[str]:
    """A fixed set of ``n`` real texts: HPO labels and, when ``data/translations`` exists,
    translated labels (up to half). Deterministic for a given seed and data."""
    from hpo_embed.translation.schema import load as load_translation

    rng = random.Random(seed)
    labels = sorted(set(terms["label"].dropna()))
    translated: list[str] = []
    files = sorted(translations.glob("HP_*.json")) if translations is not None and translations.is_dir() else []
    if files:
        for f in rng.sample(files, min(len(files), n)):
            doc = load_translation(f)
            for entry in doc["languages"].values():
                if isinstance(entry, dict) and entry.get("label"):
                    translated.append(entry["label"]["text"])
            if len(translated) >= n // 2:
                break
        translated = translated[: n // 2]
    english = rng.sample(labels, min(len(labels), n - len(translated)))
    texts = english + translated
    rng.shuffle(texts)
    return texts


def agreement_queries(terms, n: int, seed: int, queries_path: Path | None) -> tuple[list[str], list[str], str]:
    """Held-out retrieval queries: ``data/pairs/queries.parquet`` split=test when present;
    otherwise (fallback, before the pairs stage has run) one English EXACT synonym of each
    of a fixed random sample of concepts (synonyms are not in the label corpus).
    Returns the query texts, their gold HPO ids and a description of the source."""
    import pandas as pd

    if queries_path is not None and queries_path.is_file():
        from hpo_embed.schemas import read_table
        q = read_table(queries_path, "queries")
        test = q[q["split"] == "test"].dropna(subset=["text"]).drop_duplicates("text")
        pairs = sorted(zip(test["text"], test["hpo_id"]))
        if pairs:
            pick = random.Random(seed).sample(pairs, min(n, len(pairs)))
            return [t for t, _ in pick], [i for _, i in pick], f"{queries_path.name} split=test"
    pairs = []
    for row in terms.sort_values("id").to_dict("records"):
        cands = [s["text"] for s in (row["synonyms"] if row["synonyms"] is not None else [])
                 if s["scope"] == "EXACT" and s["text"] != row["label"]]
        if cands:
            pairs.append((cands[0], row["id"]))
    counts: dict[str, int] = {}
    for t, _ in pairs:
        counts[t] = counts.get(t, 0) + 1
    pairs = [(t, i) for t, i in pairs if counts[t] == 1]  # a text shared by two concepts is no query
    pick = random.Random(seed).sample(pairs, min(n, len(pairs)))
    return [t for t, _ in pick], [i for _, i in pick], "fallback: English EXACT synonyms"


# --------------------------------------------------------------------------- measuring

def encode(model, texts: list[str], batch_size: int) -> np.ndarray:
    return model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                        normalize_embeddings=False, show_progress_bar=False)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def peak_rss(folder: Path, file_name: str, texts: list[str], threads: int, batch_size: int) -> dict[str, float]:
    """Peak resident memory (MiB) of a fresh process that loads ``folder/file_name`` with the
    ONNX backend and encodes ``texts``."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(texts, fh)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from hpo_embed.export.quantize import _probe_rss; "
             "_probe_rss(*sys.argv[1:6])", str(folder), file_name, fh.name, str(threads), str(batch_size)],
            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _probe_rss(folder: str, file_name: str, texts_json: str, threads: str, batch_size: str) -> None:
    def rss_mb() -> float:
        # VmHWM: this process's own peak RSS. (getrusage's ru_maxrss survives exec on Linux,
        # so it would report the parent's peak.)
        status = Path("/proc/self/status")
        if status.is_file():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    texts = json.loads(Path(texts_json).read_text())
    import sentence_transformers  # noqa: F401  (imports counted separately from the model)

    after_import = rss_mb()
    model = load_onnx(Path(folder), file_name, int(threads))
    after_load = rss_mb()
    encode(model, texts, int(batch_size))
    print(json.dumps({"peak_rss_mb": round(rss_mb(), 1), "after_import_mb": round(after_import, 1),
                      "after_load_mb": round(after_load, 1)}))


def file_mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 2)


def torch_weights_mb(src: Path) -> float:
    files = [f for f in src.rglob("*") if f.name in WEIGHT_FILES]
    if not files:
        raise UserError(f"{src}: no model weights ({' or '.join(WEIGHT_FILES)})")
    return round(sum(f.stat().st_size for f in files) / 2**20, 2)


# --------------------------------------------------------------------------- candidates (method: auto)

ALL_OPS = ["MatMul", "Attention", "Gather", "EmbedLayerNormalization"]
# name -> (graph optimisation, QuantizeParams overrides, keep the most sensitive MatMuls fp32, what it is)
CANDIDATES: dict[str, tuple[str, dict[str, Any], bool, str]] = {
    "nbits_b32": ("none", dict(method="matmul_nbits", block_size=32, operators=ALL_OPS), False,
                  "MatMulNBits 8-bit, blocks of 32 (int8 compute) + int8 embedding Gather"),
    "fused_nbits_b32": ("O2", dict(method="matmul_nbits", block_size=32, operators=["MatMul", "Gather"]), False,
                        "ORT fusions + MatMulNBits 8-bit blocks of 32 + int8 embedding Gather"),
    "plain_dynamic": ("none", dict(method="dynamic", operators=["MatMul", "Gather"]), False,
                      "dynamic INT8 MatMul (per-channel weights) + int8 embedding Gather, no fusions"),
    "fused_dynamic": ("O2", dict(method="dynamic", operators=["MatMul", "Gather"]), False,
                      "ORT fusions (attention, GELU, skip-LayerNorm) + dynamic per-channel MatMul + int8 Gather"),
    "fused_dynamic_qattention": ("O2", dict(method="dynamic", operators=["MatMul", "Attention", "Gather"]), False,
                                 "as fused_dynamic, the fused Attention's Q/K/V projection int8 too (QAttention)"),
    "fused_dynamic_fp32_embeddings": ("O2", dict(method="dynamic", operators=["MatMul"]), False,
                                      "as fused_dynamic, embedding Gather kept fp32"),
    "fused_dynamic_keep_sensitive": ("O2", dict(method="dynamic", operators=["MatMul", "Gather"]), True,
                                     "as fused_dynamic, the most sensitive MatMuls (sensitivity pass) kept fp32"),
    "fused_static_qdq": ("O2", dict(method="static", operators=["MatMul", "Gather"]), False,
                         "ORT fusions + static QDQ MatMul/Gather calibrated on HPO texts (all languages)"),
    "plain_static_qdq": ("none", dict(method="static", operators=["MatMul", "Gather"]), False,
                         "static QDQ MatMul/Gather calibrated on HPO texts, no fusions"),
}
CANDIDATE_DIR = "onnx/candidates"
FUSED_FP32_FILE = "onnx/model_fused.onnx"  # intermediate, not published
STATE_FILE = "onnx/quantize_config.json"
TEXTS_FILE = "onnx/candidates/measure_texts.json"


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    params: QuantizeParams  # optimization + method + operators + exclusions
    keep_sensitive: int
    doc: str


def candidates_for(p: QuantizeParams) -> list[Candidate]:
    """``method: auto``: the configured candidates; any other method: that one config."""
    if p.method != "auto":
        return [Candidate(p.method, p, 0, f"fixed: method {p.method}, optimization {p.optimization}")]
    out = []
    for name in p.candidates:
        level, over, sensitive, doc = CANDIDATES[name]
        out.append(Candidate(name, p.model_copy(update={"optimization": level, **over}),
                             p.sensitive_keep if sensitive else 0, doc))
    return out


def model_inputs(onnx_path: Path) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(onnx_path), load_external_data=False).graph.input]


def model_feeds(folder: Path, onnx_file: str, texts: list[str], batch_size: int = 32) -> list[dict[str, np.ndarray]]:
    """Tokenised batches of ``texts`` as ONNX feeds (the folder's tokenizer and max length)."""
    from transformers import AutoTokenizer

    with known_good_tokenizer(folder):
        tok = AutoTokenizer.from_pretrained(str(folder))
    cfg = folder / "sentence_bert_config.json"
    max_len = json.loads(cfg.read_text()).get("max_seq_length", 128) if cfg.is_file() else 128
    names = model_inputs(folder / onnx_file)
    feeds = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_len, return_tensors="np")
        feed = {k: np.asarray(enc[k], dtype=np.int64) for k in names if k in enc}
        if "token_type_ids" in names and "token_type_ids" not in feed:
            # BERT-architecture models with an XLM-R tokenizer (multilingual-e5-small): the
            # tokenizer has no segment ids, the model takes all zeros, as in PyTorch
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        feeds.append(feed)
    return feeds


def matmul_sensitivity(onnx_path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per-layer sensitivity pass: for every MatMul with a constant weight, the relative
    error ``|Q(X) Q(W) - X W| / |X W|`` of simulated dynamic INT8 on its real fp32 input
    activations ``X`` (captured on ``feeds``): X uint8 asymmetric per tensor (as
    DynamicQuantizeLinear), W int8 symmetric per output channel. Each node is measured in
    isolation, so errors do not accumulate along the graph. Sorted, largest first."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    outputs = {o.name for o in model.graph.output}
    for name in dict.fromkeys(n.input[0] for n in nodes):
        if name not in outputs:
            model.graph.output.append(onnx.ValueInfoProto(name=name))  # ORT infers the type
    sess = ort.InferenceSession(model.SerializeToString(), ort_session_options(2),
                                providers=["CPUExecutionProvider"])
    weights = {n.name: numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes}
    qw = {}
    for name, w in weights.items():
        scale = np.maximum(np.abs(w).max(axis=0, keepdims=True), 1e-12) / 127.0
        qw[name] = (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32)
    err = {n.name: 0.0 for n in nodes}
    ref = {n.name: 0.0 for n in nodes}
    names = [o.name for o in sess.get_outputs()]
    for feed in feeds:
        acts = dict(zip(names, sess.run(None, feed)))
        for n in nodes:
            x = acts[n.input[0]].astype(np.float32).reshape(-1, weights[n.name].shape[0])  # 2-D: BLAS
            lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            scale = np.float32((hi - lo) / 255.0 or 1.0)
            zp = np.float32(np.clip(np.round(-lo / scale), 0, 255))
            xq = (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale  # float32 throughout
            y = x @ weights[n.name]
            err[n.name] += float(np.square(xq @ qw[n.name] - y).sum())
            ref[n.name] += float(np.square(y).sum())
    rel = {k: (err[k] / ref[k]) ** 0.5 if ref[k] > 0 else 0.0 for k in err}
    return dict(sorted(rel.items(), key=lambda kv: -kv[1]))


def build_candidates(folder: Path, cands: list[Candidate], calibration_texts: list[str],
                     batch_size: int) -> dict[str, dict[str, Any]]:
    """Build every candidate into ``folder/onnx/candidates/<name>.onnx`` from the plain
    export ``folder/onnx/model.onnx`` (and its ORT-fused copy for the fused ones)."""
    info: dict[str, dict[str, Any]] = {}
    fused_ops: dict[str, int] = {}
    if any(c.params.optimization != "none" for c in cands):
        levels = {c.params.optimization for c in cands} - {"none"}
        if len(levels) > 1:
            raise UserError(f"quantize candidates mix optimisation levels {sorted(levels)}")
        fused_ops = optimize_onnx(folder, FP32_FILE, FUSED_FP32_FILE, levels.pop())
    feeds: dict[str, list] = {}
    sensitivity: dict[str, dict[str, float]] = {}
    typed: dict[str, Path] = {}
    for c in cands:
        t0 = time.perf_counter()
        base = FP32_FILE if c.params.optimization == "none" else FUSED_FP32_FILE
        calib = None
        if c.params.method == "static" or c.keep_sensitive:
            if base not in feeds:
                feeds[base] = model_feeds(folder, base, calibration_texts, batch_size)
            calib = feeds[base]
        keep: list[str] = []
        if c.keep_sensitive:
            if base not in sensitivity:
                sensitivity[base] = matmul_sensitivity(folder / base, calib)
            keep = list(sensitivity[base])[:c.keep_sensitive]
        dst = f"{CANDIDATE_DIR}/{c.name}.onnx"
        log.info("candidate %s: %s", c.name, c.doc)
        if base not in typed:  # symbolic shape inference once per base graph (slow on 100M+ params)
            typed[base] = folder / f"onnx/.typed_{Path(base).stem}.onnx"
            infer_shapes(folder / base, typed[base])
        kept = quantize_onnx(folder, base, dst, c.params, calibration=calib, keep_fp32=keep, typed=typed[base])
        info[c.name] = {"file": dst, "doc": c.doc, "optimization": c.params.optimization,
                        "method": c.params.method, "operators": list(c.params.operators),
                        "nodes_kept_fp32": kept, "build_s": round(time.perf_counter() - t0, 1),
                        "size_mb": file_mb(folder / dst),
                        **({"fused_operators": fused_ops} if c.params.optimization != "none" else {}),
                        **({"sensitivity_top": {k: round(v, 5) for k, v in list(sensitivity[base].items())[:8]}}
                           if c.keep_sensitive else {})}
    for path in [*typed.values(), folder / FUSED_FP32_FILE]:
        path.unlink(missing_ok=True)
    return info


# --------------------------------------------------------------------------- measuring (auto)

def retrieval_ranks(q: np.ndarray, c: np.ndarray, gold: list[int]) -> np.ndarray:
    """Full-rank position of each query's gold document (cosine, pessimistic ties: a
    document scoring equal to the gold one ranks before it).
    LOCAL helper over hpo_embed.retrieval.metrics.expected_positions (the shared metrics module)."""
    import torch

    from hpo_embed.retrieval.metrics import expected_positions

    qn = torch.from_numpy(q / np.linalg.norm(q, axis=1, keepdims=True))
    cn = torch.from_numpy(c / np.linalg.norm(c, axis=1, keepdims=True))
    ranks = []
    for i in range(0, len(qn), 256):
        pos = expected_positions(qn[i:i + 256] @ cn.T, [[g] for g in gold[i:i + 256]])
        ranks += [p[0] for p in pos]
    return np.asarray(ranks)


def gate_corpus(corpus: dict[str, str], gold_ids: list[str], size: int, seed: int) -> tuple[list[str], list[int]]:
    """The quality-gate corpus: every gold document plus random distractors up to ``size``
    documents (0 = the whole corpus), and each query's gold index into it."""
    ids = list(corpus)
    if size and size < len(ids):
        need = [i for i in dict.fromkeys(gold_ids) if i in corpus]
        rest = sorted(set(ids) - set(need))
        ids = sorted(need + random.Random(seed).sample(rest, max(0, min(len(rest), size - len(need)))))
    index = {i: k for k, i in enumerate(ids)}
    return [corpus[i] for i in ids], [index[g] for g in gold_ids]


def quality(ref: dict[str, np.ndarray], test: dict[str, np.ndarray], gold: list[int],
            resamples: int, seed: int) -> dict[str, Any]:
    """Quality deltas of ``test`` against ``ref`` (each ``{"queries", "corpus"}`` embeddings):
    MRR and HR@1 with paired bootstrap CIs, top-1 agreement, cosine of query embeddings."""
    from hpo_embed.retrieval.metrics import paired_diff

    r_ref = retrieval_ranks(ref["queries"], ref["corpus"], gold)
    r_test = retrieval_ranks(test["queries"], test["corpus"], gold)
    out: dict[str, Any] = {"mrr": round(float((1 / r_test).mean()), 4),
                           "hr1": round(float((r_test == 1).mean()), 4)}
    for name, a, b in (("mrr", 1 / r_test, 1 / r_ref), ("hr1", (r_test == 1) * 1.0, (r_ref == 1) * 1.0)):
        d = paired_diff(a, b, resamples, seed)
        out[f"{name}_delta"] = round(d["diff"], 4)
        out[f"{name}_delta_ci"] = [round(d["diff_ci_low"], 4), round(d["diff_ci_high"], 4)]
    qa, qb = ref["queries"], test["queries"]
    ca, cb = ref["corpus"], test["corpus"]
    top_a = (qa / np.linalg.norm(qa, axis=1, keepdims=True)) @ (ca / np.linalg.norm(ca, axis=1, keepdims=True)).T
    top_b = (qb / np.linalg.norm(qb, axis=1, keepdims=True)) @ (cb / np.linalg.norm(cb, axis=1, keepdims=True)).T
    out["top1_agreement"] = round(float((top_a.argmax(1) == top_b.argmax(1)).mean()), 4)
    out["cosine_mean"] = round(float(cosine_rows(qa, qb).mean()), 5)
    return out


def speed(models: dict[str, Any], texts: list[str], latency_texts: list[str], batch_size: int,
          index_batch_size: int, repeats: int) -> dict[str, dict[str, float]]:
    """Interleaved timing in the production shapes: sentences/s at ``batch_size`` (32) and at
    ``index_batch_size`` (indexing), and batch-1 latency (one text per call, tokenisation
    included). One warm-up pass per model is excluded; each round times every model once,
    in an order rotated by one each round; throughput is the median over rounds, latency
    p50/p95 over every call."""
    from tqdm import tqdm

    names = list(models)
    for n in tqdm(names, desc="warm-up", unit="model"):
        encode(models[n], texts, batch_size)
        for t in latency_texts[:8]:
            encode(models[n], [t], 1)
    t32: dict[str, list[float]] = {n: [] for n in names}
    tix: dict[str, list[float]] = {n: [] for n in names}
    lat: dict[str, list[float]] = {n: [] for n in names}
    with tqdm(total=repeats * len(names), desc="speed", unit="model") as bar:
        for r in range(repeats):
            for n in names[r % len(names):] + names[:r % len(names)]:
                m = models[n]
                t0 = time.perf_counter()
                encode(m, texts, batch_size)
                t32[n].append(time.perf_counter() - t0)
                if index_batch_size != batch_size:
                    t0 = time.perf_counter()
                    encode(m, texts, index_batch_size)
                    tix[n].append(time.perf_counter() - t0)
                for t in latency_texts:
                    t0 = time.perf_counter()
                    encode(m, [t], 1)
                    lat[n].append(time.perf_counter() - t0)
                bar.update()
    out = {}
    for n in names:
        out[n] = {"sps_b32": round(len(texts) / statistics.median(t32[n]), 1),
                  "sps_index": round(len(texts) / statistics.median(tix[n] or t32[n]), 1),
                  "b1_p50_ms": round(1000 * float(np.percentile(lat[n], 50)), 2),
                  "b1_p95_ms": round(1000 * float(np.percentile(lat[n], 95)), 2)}
    return out


def with_ratios(rows: dict[str, dict[str, Any]], baseline: str) -> None:
    """Add speed ratios against ``baseline`` (PyTorch fp32) to every row, in place."""
    b = rows[baseline]
    for r in rows.values():
        r["ratio_b32"] = round(r["sps_b32"] / b["sps_b32"], 3)
        r["ratio_index"] = round(r["sps_index"] / b["sps_index"], 3)
        r["b1_p50_ratio"] = round(r["b1_p50_ms"] / b["b1_p50_ms"], 3)  # < 1: faster than the baseline


# --------------------------------------------------------------------------- selection

def passes_gate(row: dict[str, Any], mrr_min: float, hr1_min: float) -> bool:
    return row["mrr_delta"] >= mrr_min and row["hr1_delta"] >= hr1_min


def select(rows: dict[str, dict[str, Any]], mrr_min: float, hr1_min: float) -> tuple[str, bool, str]:
    """The candidate to publish: the fastest (batch-32 sentences/s) of those that pass the
    quality gate (MRR delta >= ``mrr_min`` and HR@1 delta >= ``hr1_min``, point estimates);
    if none passes, the best-quality one (highest MRR delta, then HR@1 delta, then speed),
    flagged. Returns ``(name, gate_passed, reason)``."""
    if not rows:
        raise ValueError("no candidates to select from")
    passing = {n: r for n, r in rows.items() if passes_gate(r, mrr_min, hr1_min)}
    if passing:
        name = max(passing, key=lambda n: (passing[n]["sps_b32"], passing[n]["mrr_delta"]))
        r = rows[name]
        return name, True, (f"fastest of {len(passing)}/{len(rows)} candidates passing the gate "
                            f"(MRR delta {r['mrr_delta']:+.4f} >= {mrr_min}, HR@1 delta {r['hr1_delta']:+.4f} >= "
                            f"{hr1_min}): {r['sps_b32']} sentences/s at batch 32")
    name = max(rows, key=lambda n: (rows[n]["mrr_delta"], rows[n]["hr1_delta"], rows[n]["sps_b32"]))
    r = rows[name]
    return name, False, (f"NO candidate passes the gate (MRR delta >= {mrr_min}, HR@1 delta >= {hr1_min}); "
                         f"published the best quality one: MRR delta {r['mrr_delta']:+.4f}, "
                         f"HR@1 delta {r['hr1_delta']:+.4f}")


# --------------------------------------------------------------------------- report

def machine() -> dict[str, Any]:
    import onnxruntime

    cpu = cpu_info()
    return {"cpu": cpu.model, "cpu_count": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
            "isa": sorted(cpu.flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd"})}


COLUMNS = [("variant", None), ("size MB", "size_mb"), ("sent/s b32", "sps_b32"), ("× PyTorch b32", "ratio_b32"),
           ("sent/s index", "sps_index"), ("× PyTorch index", "ratio_index"), ("b1 p50 ms", "b1_p50_ms"),
           ("b1 p95 ms", "b1_p95_ms"), ("MRR Δ [95% CI]", "mrr_delta"), ("HR@1 Δ [95% CI]", "hr1_delta"),
           ("top-1 agree", "top1_agreement"), ("gate", "gate"), ("GFLOP/s b32", "gflops_b32"),
           ("% fp32 peak", "peak_share_b32")]


def report_markdown(rep: dict[str, Any]) -> str:
    def cell(r: dict, key: str | None, name: str) -> str:
        if key is None:
            return f"**{name}**" if name == rep["chosen"] else name
        v = r.get(key)
        if v is None:
            return ""
        if key in ("mrr_delta", "hr1_delta"):
            lo, hi = r[f"{key}_ci"]
            return f"{v:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        if key in ("top1_agreement", "peak_share_b32"):
            return f"{v:.1%}"
        if key == "gate":
            return "pass" if v else "fail"
        return f"{v:.2f}" if isinstance(v, float) and key.startswith(("ratio", "b1")) else f"{v}"

    s = rep["settings"]
    lines = [f"# quantize: INT8 candidates measured on this machine", "",
             f"Chosen: **{rep['chosen']}** (gate {'passed' if rep['gate_passed'] else 'NOT passed'}). {rep['reason']}.", "",
             f"Model `{rep['model']}`; machine {rep['machine']['cpu']} ({rep['machine']['cpu_count']} CPUs, "
             f"{', '.join(rep['machine']['isa'])}; onnxruntime {rep['machine']['onnxruntime']}); {s['threads']} threads; "
             f"{s['n_texts']} HPO texts at batch {s['batch_size']} and {s['index_batch_size']} (indexing), "
             f"{s['latency_calls']} batch-1 calls; {s['repeats']} interleaved rounds, median; load average "
             f"{s['loadavg'][0]} -> {s['loadavg'][1]} (other processes share the CPUs: ratios are measured "
             f"under that load). Quality: {s['n_queries']} held-out queries ({s['query_source']}) against "
             f"{s['n_corpus']} documents, full-rank MRR (pessimistic ties) and HR@1 minus ONNX fp32, paired "
             f"bootstrap 95% CI; gate MRR Δ ≥ {s['gate_mrr_delta']}, HR@1 Δ ≥ {s['gate_hr1_delta']}. GFLOP/s: the "
             f"encoder's matrix-multiply FLOPs of a batch-32 pass (padded tokens) per second; % fp32 peak: over "
             f"{s.get('fp32_peak_gflops', '?')} GFLOP/s = FLOP/cycle/core x clock x threads "
             f"(hpo_embed/hardware.py).", "",
             "| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, r in rep["rows"].items():
        lines.append("| " + " | ".join(cell(r, k, name) for _, k in COLUMNS) + " |")
    lines += ["", "Candidates:", ""]
    for name, r in rep["rows"].items():
        if r.get("doc"):
            extra = f"; kept fp32: {', '.join(r['nodes_kept_fp32'])}" if r.get("nodes_kept_fp32") else ""
            lines.append(f"- `{name}`: {r['doc']}{extra}")
    lines += ["", f"Regenerate: `{rep['command']}`", ""]
    return "\n".join(lines)


def headline(rep: dict[str, Any]) -> dict[str, Any]:
    """The few keys of metrics/quantize.json (the table is in reports/quantize.*)."""
    r = rep["rows"][rep["chosen"]]
    return {"chosen": rep["chosen"], "gate_passed": rep["gate_passed"], "reason": rep["reason"],
            "candidates_passing": sum(bool(x.get("gate")) for x in rep["rows"].values() if "gate" in x),
            "speed_ratio_b32": r["ratio_b32"], "speed_ratio_index": r["ratio_index"],
            "latency_b1_p50_ratio": r["b1_p50_ratio"], "mrr_delta": r["mrr_delta"], "hr1_delta": r["hr1_delta"],
            "size_mb": r["size_mb"], "peak_rss_mb": r.get("peak_rss_mb"), "baseline": rep["baseline"]}


# --------------------------------------------------------------------------- stage

def measure_all(folder: Path, src: Path | None, cands: dict[str, dict[str, Any]], p: QuantizeParams,
                texts: list[str], latency_texts: list[str], qual: dict[str, dict] | None = None,
                q_inputs: tuple[list[str], list[str], list[int]] | None = None) -> dict[str, dict[str, Any]]:
    """Rows for PyTorch fp32 (when ``src``), ONNX fp32 and every candidate: speed, size and
    (given ``q_inputs`` = queries, corpus documents, gold indices) quality deltas against
    ONNX fp32; ``qual`` reuses quality measured earlier (``--select``)."""
    models: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    if src is not None:
        models["pytorch_fp32"] = load_torch(src, p.threads)
        rows["pytorch_fp32"] = {"size_mb": torch_weights_mb(src)}
        if native_bf16():   # a reference row (never published): what bf16 PyTorch gives on this CPU
            import torch
            models[BF16_ROW] = load_torch(src, p.threads).to(torch.bfloat16)
            rows[BF16_ROW] = {"size_mb": round(torch_weights_mb(src) / 2, 2), "reference": True,
                              "doc": "reference, not a candidate: the PyTorch model with bf16 weights "
                                     "(native bf16 on this CPU)"}
    models["onnx_fp32"] = load_onnx(folder, FP32_FILE, p.threads)
    rows["onnx_fp32"] = {"size_mb": file_mb(folder / FP32_FILE)}
    ref = None
    if q_inputs is not None:
        queries, docs, gold = q_inputs
        log.info("quality: %d queries against %d documents", len(queries), len(docs))
        ref = {"queries": encode(models["onnx_fp32"], queries, p.index_batch_size),
               "corpus": encode(models["onnx_fp32"], docs, p.index_batch_size)}
        if BF16_ROW in models:
            m = models[BF16_ROW]
            rows[BF16_ROW].update(quality(ref, {"queries": encode(m, queries, p.index_batch_size),
                                                "corpus": encode(m, docs, p.index_batch_size)},
                                          gold, p.bootstrap_resamples, p.seed))
    for name, info in cands.items():
        m = load_onnx(folder, info["file"], p.threads)
        models[name] = m
        rows[name] = {**{k: v for k, v in info.items() if k != "file"}, "size_mb": file_mb(folder / info["file"])}
        if ref is not None:
            queries, docs, gold = q_inputs
            test = {"queries": encode(m, queries, p.index_batch_size), "corpus": encode(m, docs, p.index_batch_size)}
            rows[name].update(quality(ref, test, gold, p.bootstrap_resamples, p.seed))
            log.info("%s: %s", name, {k: rows[name][k] for k in ("mrr_delta", "hr1_delta", "top1_agreement")})
        elif qual and name in qual:
            rows[name].update(qual[name])
    log.info("speed: %d models, %d texts, batch %d/%d, %d batch-1 calls, %d rounds", len(models), len(texts),
             p.batch_size, p.index_batch_size, len(latency_texts), p.repeats)
    sp = speed(models, texts, latency_texts, p.batch_size, p.index_batch_size, p.repeats)
    flops = pass_flops(models["onnx_fp32"], folder, texts, p.batch_size)
    peak = peak_flops("fp32", p.threads)
    for n in rows:
        rows[n].update(sp[n])
        if flops:   # matrix-multiply FLOP/s of a batch-32 pass over the CPU's fp32 peak
            rows[n]["gflops_b32"] = round(flops * sp[n]["sps_b32"] / len(texts) / 1e9, 1)
            rows[n]["peak_share_b32"] = round(flops * sp[n]["sps_b32"] / len(texts) / peak, 4)
    return rows


def pass_flops(model, folder: Path, texts: list[str], batch_size: int) -> float | None:
    """Matrix-multiply FLOPs of encoding ``texts`` at ``batch_size`` as sentence-transformers
    does (longest first, each batch padded to its longest text): ``hardware.encoder_flops``
    over the padded tokens; None without a BERT-style config."""
    from transformers import AutoConfig
    try:
        cfg = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError):
        return None
    if not hasattr(cfg, "intermediate_size"):
        return None
    lengths = sorted((len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
                      ["input_ids"]), reverse=True)
    padded = sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size])
                 for i in range(0, len(lengths), batch_size))
    return encoder_flops(cfg, padded, padded / max(1, len(lengths)), train=False)


QUALITY_KEYS = ("mrr", "hr1", "mrr_delta", "mrr_delta_ci", "hr1_delta", "hr1_delta_ci", "top1_agreement", "cosine_mean")


def decide_and_write(folder: Path, rows: dict[str, dict[str, Any]], p: QuantizeParams, model_name: str,
                     settings: dict[str, Any], command: str, metrics_path: Path, reports: Path,
                     texts: list[str], release: Path) -> dict[str, Any]:
    """Gate, select, write the published folder ``release`` (the chosen candidate of the
    build ``folder`` as its ``onnx/model.onnx``), measure the peak memory of a process
    serving it, write the state file, reports and headline metrics."""
    cand = {n: r for n, r in rows.items() if "mrr_delta" in r and not r.get("reference")}
    baseline = "pytorch_fp32" if "pytorch_fp32" in rows else "onnx_fp32"
    with_ratios(rows, baseline)
    for r in cand.values():
        r["gate"] = passes_gate(r, p.gate_mrr_delta, p.gate_hr1_delta)
    chosen, passed, reason = select(cand, p.gate_mrr_delta, p.gate_hr1_delta)
    write_release(folder, f"{CANDIDATE_DIR}/{chosen}.onnx", release)
    rows[chosen]["peak_rss_mb"] = peak_rss(release, PUBLISHED_FILE, texts, p.threads, p.batch_size)["peak_rss_mb"]
    rows[chosen]["folder_mb"] = round(sum(f.stat().st_size for f in release.rglob("*") if f.is_file()) / 1e6, 2)
    rep = {"model": model_name, "chosen": chosen, "gate_passed": passed, "reason": reason, "baseline": baseline,
           "machine": machine(), "settings": {**settings, "gate_mrr_delta": p.gate_mrr_delta,
                                              "gate_hr1_delta": p.gate_hr1_delta},
           "rows": rows, "command": command}
    if not passed:
        log.warning("quantize: %s", reason)
    state = {"chosen": chosen, "gate_passed": passed, "candidates": {
        n: {"file": f"{CANDIDATE_DIR}/{n}.onnx", **{k: r[k] for k in QUALITY_KEYS if k in r},
            **{k: r[k] for k in ("doc", "optimization", "method", "operators", "nodes_kept_fp32") if k in r}}
        for n, r in cand.items()}, "quality_settings": {k: settings[k] for k in ("n_queries", "n_corpus", "query_source")
                                                         if k in settings}}
    atomic_write_text(folder / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")
    reports.mkdir(parents=True, exist_ok=True)
    write_json(reports / "quantize.json", rep)
    atomic_write_text(reports / "quantize.md", report_markdown(rep))
    write_json(metrics_path, headline(rep))
    return rep


def run(p: QuantizeParams, src: Path, out: Path, metrics_path: Path,
        terms_path: Path | None = None, measure_metrics: bool = True,
        queries_path: Path | None = None, translations: Path | None = None,
        reports: Path | None = None, build: Path | None = None) -> dict[str, Any]:
    """Export, build the candidates (``method: auto``) or the one configured method into
    ``build`` (default ``<out>-build``), measure, select, publish ``out`` (the chosen INT8
    as its only ONNX file) and write metrics + reports (quantize.md, quantize.json in the
    ``reports`` folder). ``queries_path``/``translations`` absent or None: the fallback
    query and text samples. Returns the report."""
    from hpo_embed.retrieval.corpus import build_corpus, load_terms

    _check_model_folder(src, "params.yaml: quantize.model")
    cands = candidates_for(p)
    needs_texts = measure_metrics or any(c.params.method == "static" or c.keep_sensitive for c in cands)
    if (needs_texts and terms_path is None) or (measure_metrics and reports is None):
        raise TypeError("quantize.run: measuring needs terms_path and reports")
    build = build if build is not None else default_build_dir(out)
    tmp, release = _temp_sibling(build), _temp_sibling(out)
    t_start = time.perf_counter()
    try:
        log.info("export %s -> ONNX; candidates: %s", src, ", ".join(c.name for c in cands))
        export_fp32(src, tmp)
        terms = load_terms(terms_path) if needs_texts else None
        # calibration / sensitivity texts: HPO labels + translated labels (every configured
        # language present in data/translations), a different sample from the timed set
        calib = measurement_texts(terms, p.calibration_size, p.seed + 1, translations) if terms is not None else []
        built = build_candidates(tmp, cands, calib, p.batch_size)
        if not measure_metrics:  # build only (tests of the build path): first candidate as int8
            write_release(tmp, built[cands[0].name]["file"], release)
            publish_dir(tmp, build)
            publish_dir(release, out)
            return {"rows": built}
        texts = measurement_texts(terms, p.measure_size, p.seed, translations)
        queries, gold_ids, query_source = agreement_queries(terms, p.agreement_queries, p.seed, queries_path)
        docs, gold = gate_corpus(build_corpus(terms, p.corpus_format), gold_ids, p.gate_corpus, p.seed)
        latency_texts = queries[:p.latency_queries]
        (tmp / TEXTS_FILE).write_text(json.dumps({"texts": texts, "latency_texts": latency_texts}) + "\n")
        load0 = os.getloadavg()[0]
        rows = measure_all(tmp, src, built, p, texts, latency_texts, q_inputs=(queries, docs, gold))
        settings = {"threads": p.threads, "batch_size": p.batch_size, "index_batch_size": p.index_batch_size,
                "fp32_peak_gflops": round(peak_flops("fp32", p.threads) / 1e9),
                    "n_texts": len(texts), "latency_calls": len(latency_texts) * p.repeats, "repeats": p.repeats,
                    "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)], "n_queries": len(queries),
                    "n_corpus": len(docs), "query_source": query_source}
        model_name = str(src.relative_to(ROOT)) if src.is_relative_to(ROOT) else str(src)
        rep = decide_and_write(tmp, rows, p, model_name, settings, "python -m stages.quantize  # dvc repro quantize",
                               metrics_path, reports, texts, release)
        rep["settings"]["stage_s"] = round(time.perf_counter() - t_start, 1)
        write_json(reports / "quantize.json", rep)
        publish_dir(tmp, build)
        publish_dir(release, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(release, ignore_errors=True)
        raise
    return rep


def select_on_this_machine(p: QuantizeParams, src: Path | None, out: Path, metrics_path: Path,
                           reports: Path, build: Path | None = None) -> dict[str, Any]:
    """``--select``: re-measure the speed of the candidates already built in ``build``
    (default ``<out>-build``) on this machine (quality deltas are properties of the files
    and reused from the build run), re-select and re-publish ``out``. PyTorch fp32 is the
    baseline when ``src`` exists, ONNX fp32 otherwise (e.g. a production server without
    the PyTorch model)."""
    build = build if build is not None else default_build_dir(out)
    state_path = build / STATE_FILE
    if not state_path.is_file() or "candidates" not in json.loads(state_path.read_text()):
        raise UserError(f"{state_path}: no built candidates; run `python -m stages.quantize` (method auto) first")
    state = json.loads(state_path.read_text())
    cands = {n: {"file": c["file"], **{k: c[k] for k in ("doc", "optimization", "method", "operators",
                                                         "nodes_kept_fp32") if k in c}}
             for n, c in state["candidates"].items() if (build / c["file"]).is_file()}
    if not cands:
        raise UserError(f"{build / CANDIDATE_DIR}: candidate files missing; rebuild with `python -m stages.quantize`")
    qual = {n: {k: c[k] for k in QUALITY_KEYS if k in c} for n, c in state["candidates"].items()}
    t = json.loads((build / TEXTS_FILE).read_text())
    load0 = os.getloadavg()[0]
    rows = measure_all(build, src, cands, p, t["texts"], t["latency_texts"], qual=qual)
    settings = {"threads": p.threads, "batch_size": p.batch_size, "index_batch_size": p.index_batch_size,
                "fp32_peak_gflops": round(peak_flops("fp32", p.threads) / 1e9),
                "n_texts": len(t["texts"]), "latency_calls": len(t["latency_texts"]) * p.repeats,
                "repeats": p.repeats, "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)],
                **state.get("quality_settings", {"n_queries": "?", "n_corpus": "?", "query_source": "build run"})}
    release = _temp_sibling(out)
    try:
        rep = decide_and_write(build, rows, p, str(src) if src else str(out), settings,
                               "python -m stages.quantize --select", metrics_path, reports, t["texts"], release)
        publish_dir(release, out)
    except BaseException:
        shutil.rmtree(release, ignore_errors=True)
        raise
    return rep

