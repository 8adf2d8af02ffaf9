"""The memory estimator against measurement (tensors autograd keeps, small random-weight
encoders on CPU), the issue's BAAI/bge-m3 table, the gpu profile's budget, the preflight
checks, the cached loss's precision and `make gpu-check` (skip / tiny CPU run)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpo_embed.common import UserError
from hpo_embed.gpu.estimate import (GIB, Shape, checkpoint_bytes, estimate_for_params, estimate_memory,
                                 estimate_time, model_config, saved_bytes, sequence_bytes)
from hpo_embed.params import parse_params
from hpo_embed.gpu.profile import apply_profile

REPO = Path(__file__).resolve().parent.parent


def _encoder(model_type: str, layers: int, hidden: int, heads: int, inter: int, dropout: float = 0.1):
    import torch
    from transformers import AutoConfig, AutoModel
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, vocab_size=500, hidden_size=hidden, num_hidden_layers=layers,
                               num_attention_heads=heads, intermediate_size=inter, max_position_embeddings=140,
                               hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    model = AutoModel.from_config(cfg)
    model.train()
    return model, Shape.from_config(cfg.to_dict())


SMALL = [("xlm-roberta", 2, 128, 4, 512, 8, 64), ("xlm-roberta", 3, 96, 6, 384, 6, 40), ("bert", 2, 64, 2, 256, 4, 96)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("model_type,layers,hidden,heads,inter,batch,seq", SMALL)
def test_estimate_matches_saved_activations_on_cpu(precision, model_type, layers, hidden, heads, inter, batch, seq):
    """CPU training forward (dropout on: SDPA takes the math path with L x L scores)."""
    import torch
    model, shape = _encoder(model_type, layers, hidden, heads, inter)
    ids = torch.randint(5, 500, (batch, seq))
    measured = saved_bytes(model, ids, torch.ones_like(ids), precision)
    copies = 2 * shape.layers * shape.layer_linear_params() if precision == "bf16" else 0
    estimated = batch * sequence_bytes(shape, seq, precision, "math") + copies
    assert estimated == pytest.approx(measured, rel=0.05)
    # and per layer: one more layer adds what the estimator says a layer costs
    model2, shape2 = _encoder(model_type, layers + 1, hidden, heads, inter)
    extra = saved_bytes(model2, ids, torch.ones_like(ids), precision) - measured
    per_layer = (batch * (sequence_bytes(shape2, seq, precision, "math") - sequence_bytes(shape, seq, precision, "math"))
                 + (2 * shape.layer_linear_params() if precision == "bf16" else 0))
    assert per_layer == pytest.approx(extra, rel=0.03)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_efficient_attention_terms_match_the_fused_kernel_on_cpu(precision):
    """Without dropout and padding, CPU SDPA uses the fused (flash) kernel, which keeps what
    CUDA's kernels keep: q, k, v and a log-sum-exp, no L x L matrix."""
    import torch
    model, shape = _encoder("xlm-roberta", 2, 128, 4, 512, dropout=0.0)
    ids = torch.randint(5, 500, (8, 64))
    measured = saved_bytes(model, ids, None, precision)
    copies = 2 * shape.layers * shape.layer_linear_params() if precision == "bf16" else 0
    estimated = 8 * sequence_bytes(shape, 64, precision, "efficient", mask_bytes=0, padding_mask=False) + copies
    assert estimated == pytest.approx(measured, rel=0.03)
    # the math path's L x L terms are what the fused kernel saves: fewer bytes, by the estimator's margin
    math = saved_bytes(_encoder("xlm-roberta", 2, 128, 4, 512)[0], ids, torch.ones_like(ids), precision)
    assert math > measured * 1.3


def _bge_m3() -> Shape:
    return Shape.from_config(model_config("BAAI/bge-m3"))


def test_bge_m3_shape_twin_has_its_parameter_count():
    assert _bge_m3().params() == pytest.approx(567.8e6, rel=0.001)
    assert 16 * _bge_m3().params() / GIB == pytest.approx(8.5, abs=0.1)       # weights + grads + AdamW
    assert checkpoint_bytes(_bge_m3()) / 1e9 == pytest.approx(6.8, abs=0.1)   # weights + optimizer state


@pytest.mark.parametrize("loss,batch,mini,gc,issue_gib", [
    ("mnrl", 256, None, False, 83), ("mnrl", 48, None, False, 22),
    ("mnrl", 256, None, True, 18), ("cached_mnrl", 256, 64, False, 19)])
def test_issue_table_is_reproduced_within_15_percent(loss, batch, mini, gc, issue_gib):
    e = estimate_memory(_bge_m3(), loss=loss, batch_size=batch, seq_len=128, precision="bf16",
                        mini_batch_size=mini, gradient_checkpointing=gc)
    assert e.peak_gib == pytest.approx(issue_gib, rel=0.15)
    assert (e.peak_gib < 30) == (issue_gib < 30)


def _gpu_params(tmp_path, **train):
    text = apply_profile("gpu", REPO / "params.yaml")
    raw = yaml.safe_load(text)
    raw["train"].update(train)
    return parse_params(raw)


def test_gpu_profile_fits_a_32_gb_card_with_headroom(tmp_path):
    params = _gpu_params(tmp_path)
    assert params.train.loss == "cached_mnrl" and params.train.device == "cuda"
    _, mem, t, disk = estimate_for_params(params, pairs=500_000)
    assert mem.peak_gib < 28
    assert mem.sequences_in_flight == params.train.mini_batch_size
    per_epoch = -(-500_000 // params.train.batch_size)
    assert t["steps"] == math.ceil(params.train.epochs * per_epoch)
    assert disk["checkpoints_kept"] == params.train.save_total_limit + 1
    # the same batch with plain mnrl would not fit
    _, plain, _, _ = estimate_for_params(_gpu_params(tmp_path, loss="mnrl"))
    assert plain.peak_gib > 32


def test_time_estimate_counts_steps_as_the_trainer_does():
    """ceil(pairs / batch) steps per epoch, times the epochs: 61,544 pairs twice at batch 128
    are 2 x 481 = 962 steps (the trainer's count), not ceil(123,088 / 128) = 961."""
    s = Shape(layers=12, hidden=384, heads=12, intermediate=1536, vocab=250_037, max_positions=512)
    t = estimate_time(s, loss="cached_mnrl", batch_size=128, seq_len=64, pairs=61_544, epochs=2.0)
    assert t["steps"] == 962 and t["train_h"] == pytest.approx(962 * t["step_s"] / 3600)
    assert estimate_time(s, loss="mnrl", batch_size=32, seq_len=64, pairs=6_400, epochs=1.5)["steps"] == 300


# --------------------------------------------------------------------------- preflight

def test_preflight_missing_hub_model_is_one_line_in_seconds(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(apply_profile("gpu", REPO / "params.yaml"))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "stages.preflight", "--params", str(params),
                        "--stamp", str(tmp_path / "ok.json")], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "BAAI/bge-m3" in lines[0] and "local Hugging Face cache" in lines[0]
    assert "5617a9f61b028005a4858fdac845db406aefb181" in lines[0]
    assert not (tmp_path / "ok.json").exists()
    assert time.time() - t < 60  # seconds, not the paid translation or training first


def _fake_hub_cache(root: Path, repo: str, revision: str, weights: bool = True) -> None:
    d = root / "hub" / ("models--" + repo.replace("/", "--"))
    snap = d / "snapshots" / revision
    snap.mkdir(parents=True)
    (snap / "config.json").write_text('{"model_type": "bert"}')
    if weights:
        (snap / "model.safetensors").write_bytes(b"x")
    (d / "refs").mkdir()
    (d / "refs" / "main").write_text(revision)


def test_preflight_resolves_a_pinned_hub_model_from_the_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c
    from hpo_embed.gpu.preflight import check_model
    rev = "a" * 40
    _fake_hub_cache(tmp_path, "org/model", rev)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert Path(check_model("org/model", "train.base_model", rev)).name == rev
    with pytest.raises(UserError, match="at revision " + "b" * 40):
        check_model("org/model", "train.base_model", "b" * 40)
    with pytest.raises(UserError, match="40-hex"):
        check_model("org/model", "train.base_model", "main")
    _fake_hub_cache(tmp_path, "org/empty", rev, weights=False)
    with pytest.raises(UserError, match="lacks config.json or model weights"):
        check_model("org/empty", "train.base_model", rev)


def test_preflight_missing_local_model_and_cuda(tmp_path, monkeypatch, tiny_model_dir):
    import torch
    from hpo_embed.gpu.preflight import check_model, resolve_device, run
    with pytest.raises(UserError, match="no such model folder"):
        check_model("models/nothing-here", "train.base_model")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(UserError) as exc:
        resolve_device("cuda")
    msg = str(exc.value)
    assert "train.device is cuda" in msg and "\n" not in msg
    assert ("CPU-only build" in msg) if torch.version.cuda is None else ("driver" in msg)
    params = parse_params({"train": {"base_model": str(tiny_model_dir), "device": "cuda"}})
    with pytest.raises(UserError, match="train.device is cuda"):
        run(params)
    info = run(parse_params({"train": {"base_model": str(tiny_model_dir)}}), pairs=1000)
    assert info["device"] == "cpu" and info["estimated_peak_gib"] > 0


def test_oom_hint_names_the_setting_to_lower(tmp_path):
    from hpo_embed.gpu.preflight import lower_hint
    assert "train.mini_batch_size (now 64)" in lower_hint(_gpu_params(tmp_path).train)
    hint = lower_hint(_gpu_params(tmp_path, loss="mnrl").train)
    assert "train.batch_size (now 256)" in hint and "train.gradient_checkpointing: true" in hint


def test_dvc_runs_preflight_before_translate_and_does_not_cache_checkpoints():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["preflight"]["cmd"].startswith("python -m stages.preflight ")
    stamp = next(iter(stages["preflight"]["outs"][0]))
    assert stamp in stages["translate"]["deps"]
    for stage, folder in (("train", "models/checkpoints"), ("rerank_train", "models/checkpoints-rerank")):
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages[stage]["outs"]]
        assert folder not in outs and f"--checkpoints {folder} " in stages[stage]["cmd"]


# --------------------------------------------------------------------------- cached loss precision

def test_cached_mnrl_gradient_pass_runs_in_the_training_precision(tiny_model_dir):
    import torch
    from sentence_transformers import SentenceTransformer
    from hpo_embed.training.losses import build_loss, set_precision
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    p = parse_params({"train": {"loss": "cached_mnrl", "mini_batch_size": 2}}).train
    feats = [model.tokenize(["Arthritis", "Tremor", "Fever", "Seizure"]),
             model.tokenize(["Gelenkentzündung", "Tremor", "Fieber", "Krampfanfall"])]
    seen: list[tuple[bool, bool]] = []
    model[0].register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(),
                                                                  torch.is_autocast_enabled("cpu"))))
    for precision, want in (("fp32", False), ("bf16", True)):
        loss = build_loss(model, p)
        set_precision(loss, precision)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            value = loss(feats, None)
        value.backward()  # as the Trainer does: outside autocast
        grad_pass = [a for g, a in seen if g]
        assert len(grad_pass) == 4 and all(a == want for a in grad_pass)  # 2 columns x 2 mini-batches


# --------------------------------------------------------------------------- gpu-check

def test_gpu_check_skips_without_cuda_and_runs_tiny_on_cpu(tmp_path, monkeypatch, capsys):
    import torch
    from hpo_embed.gpu import check as gpu_check
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpu_check.main([])
    out = capsys.readouterr().out
    assert out.startswith("gpu-check skipped: no CUDA device: ") and len(out.strip().splitlines()) == 1
    gpu_check.main(["--tiny", "--steps", "2", "--json", str(tmp_path / "gc.json")])
    import json
    r = json.loads((tmp_path / "gc.json").read_text())
    assert r["device"] == "cpu" and r["loss"] == "cached_mnrl" and r["tiny"]
    assert r["batch_size"] == 8 and r["mini_batch_size"] == 4 and r["max_seq_length"] == 32
    assert len(r["loss_values"]) == 2 and all(0 < v < 10 for v in r["loss_values"])
    assert r["tokens_per_s"] == pytest.approx(2 * 8 * 2 * 32 * r["steps_per_s"] / 2, rel=0.01)
