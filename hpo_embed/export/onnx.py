"""ONNX export and INT8 quantisation with the real libraries: the sentence-transformers ONNX
backend (Optimum underneath) for the fp32 export, Optimum ORTOptimizer fusions, ONNX Runtime
quantizers; loading either backend; the published folder."""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from hpo_embed.common import UserError
from hpo_embed.models.loader import known_good_tokenizer, load_sentence_transformer
from hpo_embed.params import QuantizeParams

FP32_FILE = "onnx/model.onnx"        # in the build folder: the plain fp32 export


PUBLISHED_FILE = "onnx/model.onnx"   # in the published folder: the chosen INT8 graph, the only ONNX file


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def check_model_folder(path: Path, what: str) -> None:
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


def export_fp32(src: Path, dst: Path) -> None:
    """Export ``src`` (a PyTorch SentenceTransformer folder) to an ONNX SentenceTransformer
    folder ``dst`` with ``onnx/model.onnx`` (plain export, no optimisation)."""

    check_model_folder(src, f"quantize --model {src}")
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


def file_mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 2)
