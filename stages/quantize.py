"""Stage quantize: ``models/finetuned`` -> ``models/onnx/`` (ONNX fp32 + dynamic INT8)
+ ``metrics/quantize.json``.

Steps (all with the real libraries, no hand-rolled graph surgery):
1. export the SentenceTransformer to ONNX with the sentence-transformers ONNX backend
   (Optimum underneath) and save the whole SentenceTransformer folder (modules.json,
   pooling, normalisation, tokenizer), so pooling and normalisation stay identical;
2. optionally optimise the graph with Optimum's ``ORTOptimizer`` (``quantize.optimization``:
   O1/O2 fuse attention, LayerNorm and GELU; O3 also approximates GELU) -> ``onnx/model.onnx``;
3. INT8 -> ``onnx/model_int8.onnx``: ``quantize.method`` ``matmul_nbits`` (default) turns the
   weight MatMuls into onnxruntime ``MatMulNBits`` (8-bit, one scale per ``block_size``
   weights, int8 compute with per-block activation scales) and quantizes the embedding
   Gather with Optimum's ``ORTQuantizer``; ``dynamic`` uses the ``ORTQuantizer`` for all
   operators (an ``AutoQuantizationConfig`` preset with per-channel, reduce_range, the
   operators to quantize and the nodes kept fp32 from params);
4. measure, in one run on the same inputs: file sizes, CPU throughput of PyTorch fp32 /
   ONNX fp32 / ONNX int8 (threads pinned, warm-up excluded), peak RSS of a separate
   process that loads the int8 model and encodes the set, and fp32-vs-int8 agreement
   (cosine, top-1 retrieval on held-out queries against the English corpus).

Both files load with
``SentenceTransformer("models/onnx", backend="onnx", model_kwargs={"file_name": "onnx/model.onnx"})``
(or ``onnx/model_int8.onnx``). The folder is built in a temporary sibling and renamed into
place, so an interrupted run never leaves a half-written ``models/onnx``.
"""
from __future__ import annotations

import argparse
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

from stages.common import DATA, METRICS, MODELS, ROOT, UserError, log, run_stage, write_json
from stages.params import QuantizeParams, load_params

OUT_DIR = MODELS / "onnx"
FP32_FILE = "onnx/model.onnx"
INT8_FILE = "onnx/model_int8.onnx"
QUERIES = DATA / "pairs" / "queries.parquet"
TRANSLATIONS = DATA / "translations"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# --------------------------------------------------------------------------- loading

def _check_model_folder(path: Path, what: str) -> None:
    if not path.exists():
        raise UserError(f"{what}: {path}: no such model folder; run the train stage first")
    if not path.is_dir():
        raise UserError(f"{what}: {path}: not a folder")
    if not (path / "modules.json").is_file():
        raise UserError(f"{what}: {path}: not a SentenceTransformer folder (no modules.json)")


def _load_error(path: Path, exc: BaseException) -> UserError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return UserError(f"{path}: cannot load the model ({type(exc).__name__}: {first[:200]})")


def ort_session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


def load_torch(path: Path, threads: int):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    try:
        return SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except Exception as exc:  # corrupt weights/config/tokenizer: a bad input, not a bug
        raise _load_error(path, exc) from None


def load_onnx(folder: Path, file_name: str, threads: int):
    """The stage's own output, loaded exactly as downstream stages load it."""
    from sentence_transformers import SentenceTransformer

    if not (folder / file_name).is_file():
        raise UserError(f"{folder / file_name}: missing ONNX file")
    try:
        return SentenceTransformer(
            str(folder), backend="onnx", device="cpu", local_files_only=True,
            model_kwargs={"file_name": file_name, "provider": "CPUExecutionProvider",
                          "session_options": ort_session_options(threads)})
    except Exception as exc:
        raise _load_error(folder / file_name, exc) from None


# --------------------------------------------------------------------------- export

def export_fp32(src: Path, dst: Path) -> None:
    """Export ``src`` (a PyTorch SentenceTransformer folder) to an ONNX SentenceTransformer
    folder ``dst`` with ``onnx/model.onnx`` (plain export, no optimisation)."""
    from sentence_transformers import SentenceTransformer

    _check_model_folder(src, "params.yaml: quantize.model")
    try:
        model = SentenceTransformer(str(src), backend="onnx", device="cpu", local_files_only=True,
                                    model_kwargs={"export": True, "provider": "CPUExecutionProvider"})
    except UserError:
        raise
    except Exception as exc:
        raise _load_error(src, exc) from None
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


def quantize_onnx(folder: Path, src_file: str, dst_file: str, p: QuantizeParams) -> list[str]:
    """INT8 ``folder/src_file`` -> ``folder/dst_file``; returns the node names kept fp32.

    ``quantize.method``:
    - ``dynamic``: Optimum's ORTQuantizer (onnxruntime dynamic quantization,
      QOperator MatMulInteger/QAttention/...): weights int8, activations quantized to uint8
      per tensor at run time;
    - ``matmul_nbits``: the MatMuls with constant weights become onnxruntime's
      ``MatMulNBits`` (8-bit weights in blocks of ``quantize.block_size`` with their own
      scale; ``accuracy_level`` 4 = int8 compute with activations quantized per block, not
      per tensor), the other operators (embedding Gather, fused Attention) go through the
      dynamic ORTQuantizer as above.
    """
    from optimum.onnxruntime import ORTQuantizer

    excluded = resolve_exclusions(folder / src_file, list(p.exclude_nodes))
    nbits = p.method == "matmul_nbits" and "MatMul" in p.operators
    dynamic_ops = [o for o in p.operators if not (nbits and o == "MatMul")]
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        # fused contrib ops (Attention, SkipLayerNormalization ...) have no ONNX shape
        # function; ONNX Runtime's symbolic shape inference types their outputs so that the
        # quantizer can see that e.g. the MatMul after Attention is float
        current = Path(scratch) / "typed.onnx"
        infer_shapes(folder / src_file, current)
        if dynamic_ops:
            qconfig = quantization_config(dataclasses.replace(p, operators=dynamic_ops), excluded)
            ORTQuantizer(current, config=_hf_config(folder)).quantize(qconfig, scratch, file_suffix="int8")
            current = Path(scratch) / "typed_int8.onnx"
        if nbits:
            import onnx
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(onnx.load(str(current)), bits=8, block_size=p.block_size,
                                             is_symmetric=True, accuracy_level=p.accuracy_level,
                                             nodes_to_exclude=excluded, op_types_to_quantize=("MatMul",))
            quantizer.process()
            current = Path(scratch) / "typed_nbits.onnx"
            onnx.save(quantizer.model.model, str(current))
        os.replace(current, folder / dst_file)
    return excluded


def build(src: Path, dst: Path, p: QuantizeParams) -> dict[str, Any]:
    """Export + optimise + quantize ``src`` into a new folder ``dst`` (must not exist)."""
    export_fp32(src, dst)
    fused: dict[str, int] = {}
    if p.optimization != "none":
        fused = optimize_onnx(dst, FP32_FILE, FP32_FILE, p.optimization)
    excluded = quantize_onnx(dst, FP32_FILE, INT8_FILE, p)
    info = {"optimization": p.optimization, "fused_operators": fused, "nodes_kept_fp32": excluded,
            "quantization": {k: v for k, v in dataclasses.asdict(p).items()
                             if k in ("method", "block_size", "accuracy_level", "preset", "per_channel",
                                      "reduce_range", "operators", "exclude_nodes")}}
    (dst / "onnx" / "quantize_config.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


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


def publish(tmp: Path, out: Path) -> None:
    """Swap the finished ``tmp`` folder into ``out`` (rename; the old one removed after)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- inputs

def measurement_texts(terms, n: int, seed: int, translations: Path = TRANSLATIONS) -> list[str]:
    """A fixed set of ``n`` real texts: HPO labels and, when ``data/translations`` exists,
    translated labels (up to half). Deterministic for a given seed and data."""
    from stages.translation_schema import load as load_translation

    rng = random.Random(seed)
    labels = sorted(set(terms["label"].dropna()))
    translated: list[str] = []
    files = sorted(translations.glob("HP_*.json")) if translations.is_dir() else []
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


def agreement_queries(terms, n: int, seed: int,
                      queries_path: Path = QUERIES) -> tuple[list[str], list[str], str]:
    """Held-out retrieval queries: ``data/pairs/queries.parquet`` split=test when present;
    otherwise (fallback, before the pairs stage has run) one English EXACT synonym of each
    of a fixed random sample of concepts (synonyms are not in the label corpus).
    Returns the query texts, their gold HPO ids and a description of the source."""
    import pandas as pd

    if queries_path.is_file():
        q = pd.read_parquet(queries_path)
        missing = {"text", "hpo_id", "split"} - set(q.columns)
        if missing:
            raise UserError(f"{queries_path}: missing columns {sorted(missing)}")
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


def throughput(models: dict[str, Any], texts: list[str], batch_size: int, repeats: int) -> dict[str, dict]:
    """Sentences/s of each model on ``texts``; rounds interleave the models so that load
    from other processes hits all of them alike; one full warm-up pass each is excluded
    (PyTorch's first pass over new sequence lengths is several times slower)."""
    from tqdm import tqdm

    for m in tqdm(list(models.values()), desc="warm-up", unit="model"):
        encode(m, texts, batch_size)
    times: dict[str, list[float]] = {k: [] for k in models}
    with tqdm(total=repeats * len(models), desc="throughput", unit="run") as bar:
        for _ in range(repeats):
            for name, m in models.items():
                t0 = time.perf_counter()
                encode(m, texts, batch_size)
                times[name].append(time.perf_counter() - t0)
                bar.update()
    return {k: {"sentences_per_s": round(len(texts) / statistics.median(v), 1),
                "sentences_per_s_best": round(len(texts) / min(v), 1),  # least disturbed pass
                "seconds_median": round(statistics.median(v), 3),
                "seconds_all": [round(x, 3) for x in v]} for k, v in times.items()}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def top1(queries: np.ndarray, corpus: np.ndarray,
         gold: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index of the best document per query, its cosine margin over the runner-up and the
    reciprocal rank of the ``gold`` document (index into ``corpus``; -1 = not in it: 0)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    c = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    best = np.empty(len(q), dtype=np.int64)
    margin = np.zeros(len(q))
    rr = np.zeros(len(q))
    for i in range(0, len(q), 512):
        sims = q[i:i + 512] @ c.T
        best[i:i + 512] = sims.argmax(axis=1)
        if gold is not None:
            g = gold[i:i + 512]
            from stages.retrieval_metrics import gold_ranks   # the pipeline's one MRR definition
            rank = gold_ranks(sims, g)   # full rank, ties pessimistic; 0 = gold not in the corpus
            rr[i:i + 512] = np.where(g >= 0, 1.0 / np.maximum(rank, 1), 0.0)
        if sims.shape[1] > 1:
            two = -np.partition(-sims, 1, axis=1)[:, :2]
            margin[i:i + 512] = two[:, 0] - two[:, 1]
    return best, margin, rr


def agreement(ref, test, texts: list[str], queries: list[str], corpus: list[str],
              batch_size: int, ref_corpus: np.ndarray | None = None,
              ref_texts: np.ndarray | None = None, ref_queries: np.ndarray | None = None,
              gold: list[int] | None = None) -> dict[str, Any]:
    """fp32 (``ref``) vs int8 (``test``): cosine on ``texts``, top-1 retrieval agreement of
    ``queries`` against ``corpus`` and, given ``gold`` (each query's corpus index), the MRR
    of both. Reference embeddings can be passed in to reuse them."""
    e_ref = ref_texts if ref_texts is not None else encode(ref, texts, batch_size)
    cos = cosine_rows(e_ref, encode(test, texts, batch_size))
    c_ref = ref_corpus if ref_corpus is not None else encode(ref, corpus, batch_size)
    q_ref = ref_queries if ref_queries is not None else encode(ref, queries, batch_size)
    g = np.asarray(gold) if gold is not None else None
    t_ref, margin, rr_ref = top1(q_ref, c_ref, g)
    t_test, _, rr_test = top1(encode(test, queries, batch_size), encode(test, corpus, batch_size), g)
    same = t_ref == t_test
    clear = margin >= 0.01  # fp32 top-1 beats the runner-up by at least 0.01 cosine
    return {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5),
            "cosine_p01": round(float(np.quantile(cos, 0.01)), 5),
            "top1_agreement": round(float(same.mean()), 4),
            "fp32_margin_below_0.01_share": round(float((~clear).mean()), 4),
            "top1_agreement_margin_ge_0.01": round(float(same[clear].mean()), 4) if clear.any() else None,
            **({"mrr_fp32": round(float(rr_ref.mean()), 4), "mrr_int8": round(float(rr_test.mean()), 4),
                "mrr_delta": round(float(rr_test.mean() - rr_ref.mean()), 4)} if g is not None else {}),
            "n_texts": len(texts), "n_queries": len(queries), "n_corpus": len(corpus)}


def peak_rss(folder: Path, file_name: str, texts: list[str], threads: int, batch_size: int) -> dict[str, float]:
    """Peak resident memory (MiB) of a fresh process that loads ``folder/file_name`` with the
    ONNX backend and encodes ``texts``."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(texts, fh)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "stages.quantize", "--probe-rss", str(folder), file_name, fh.name,
             str(threads), str(batch_size)],
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


def measure(src: Path, out: Path, p: QuantizeParams, terms, corpus: dict[str, str],
            queries_path: Path = QUERIES, translations: Path = TRANSLATIONS) -> dict[str, Any]:
    texts = measurement_texts(terms, p.measure_size, p.seed, translations)
    queries, gold_ids, query_source = agreement_queries(terms, p.agreement_queries, p.seed, queries_path)
    docs = list(corpus.values())
    index = {hpo_id: i for i, hpo_id in enumerate(corpus)}
    gold = [index.get(i, -1) for i in gold_ids]
    torch_model = load_torch(src, p.threads)
    fp32 = load_onnx(out, FP32_FILE, p.threads)
    int8 = load_onnx(out, INT8_FILE, p.threads)
    log.info("throughput on %d texts, %d threads, batch %d", len(texts), p.threads, p.batch_size)
    load_before = os.getloadavg()[0]
    tp = throughput({"pytorch_fp32": torch_model, "onnx_fp32": fp32, "onnx_int8": int8},
                    texts, p.batch_size, p.repeats)
    load_after = os.getloadavg()[0]
    e_torch = encode(torch_model, texts, p.batch_size)
    e_fp32 = encode(fp32, texts, p.batch_size)
    log.info("agreement: %d queries against %d documents", len(queries), len(docs))
    agree = agreement(fp32, int8, texts, queries, docs, p.batch_size, ref_texts=e_fp32, gold=gold)
    log.info("peak memory of a process encoding with the int8 model")
    rss = peak_rss(out, INT8_FILE, texts, p.threads, p.batch_size)
    sizes = {"pytorch_mb": torch_weights_mb(src), "onnx_fp32_mb": file_mb(out / FP32_FILE),
             "onnx_int8_mb": file_mb(out / INT8_FILE)}
    sizes["int8_vs_fp32"] = round(sizes["onnx_int8_mb"] / sizes["onnx_fp32_mb"], 4)
    sps = {k: v["sentences_per_s"] for k, v in tp.items()}
    return {
        "size": sizes,
        "throughput": {**tp, "int8_vs_pytorch": round(sps["onnx_int8"] / sps["pytorch_fp32"], 3),
                       "int8_vs_pytorch_best": round(tp["onnx_int8"]["sentences_per_s_best"]
                                                     / tp["pytorch_fp32"]["sentences_per_s_best"], 3),
                       "fp32_vs_pytorch": round(sps["onnx_fp32"] / sps["pytorch_fp32"], 3),
                       "threads": p.threads, "batch_size": p.batch_size, "repeats": p.repeats,
                       "n_texts": len(texts), "loadavg_1min": [round(load_before, 2), round(load_after, 2)],
                       "cpu_count": os.cpu_count()},
        "memory": {"int8_process_" + k: v for k, v in rss.items()},
        "agreement": {**agree, "query_source": query_source,
                      "onnx_fp32_vs_pytorch_cosine_min": round(float(cosine_rows(e_torch, e_fp32).min()), 6),
                      "onnx_fp32_vs_pytorch_max_abs": float(np.abs(e_torch - e_fp32).max())},
        "embedding_dim": int(e_fp32.shape[1]),
    }


# --------------------------------------------------------------------------- stage

def run(p: QuantizeParams, src: Path, out: Path = OUT_DIR, metrics_path: Path = METRICS / "quantize.json",
        terms_path: Path | None = None, measure_metrics: bool = True,
        queries_path: Path = QUERIES, translations: Path = TRANSLATIONS) -> dict[str, Any]:
    from stages.corpus import TERMS, build_corpus, load_terms

    _check_model_folder(src, "params.yaml: quantize.model")
    terms = load_terms(terms_path or TERMS) if measure_metrics else None
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    try:
        shutil.rmtree(tmp)
        log.info("export %s -> ONNX, optimise (%s), quantize (%s)", src, p.optimization, p.preset)
        info = build(src, tmp, p)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    metrics: dict[str, Any] = {"model": str(src.relative_to(ROOT)) if src.is_relative_to(ROOT) else str(src),
                               "files": {"fp32": FP32_FILE, "int8": INT8_FILE}, **info}
    if measure_metrics:
        metrics.update(measure(src, out, p, terms, build_corpus(terms, p.corpus_format),
                               queries_path, translations))
    write_json(metrics_path, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--probe-rss":
        _probe_rss(*argv[1:6])
        return
    ap = argparse.ArgumentParser(prog="python -m stages.quantize", description=__doc__.split("\n")[0])
    ap.parse_args(argv)
    import logging
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)  # one INFO line per graph node otherwise
    p = load_params().quantize
    from stages.models import resolve_model

    src = Path(resolve_model(p.model, "quantize.model"))
    m = run(p, src)
    s, t, a = m["size"], m["throughput"], m["agreement"]
    print(f"size {s['onnx_fp32_mb']} -> {s['onnx_int8_mb']} MB ({s['int8_vs_fp32']:.0%}); "
          f"int8 {t['onnx_int8']['sentences_per_s']}/s = {t['int8_vs_pytorch']}x PyTorch; "
          f"cosine mean {a['cosine_mean']} min {a['cosine_min']}; top-1 agreement {a['top1_agreement']:.1%}; "
          f"peak RSS {m['memory']['int8_process_peak_rss_mb']} MB")


if __name__ == "__main__":
    run_stage(main)
