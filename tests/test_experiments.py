"""hpo_embed.experiments: queueing runs through DVC's queue (the -S arguments, the copied
inputs, the poll line); reading an experiment's files back is tested with scripts/ablation.py's
collect (tests/test_ablation.py)."""
from __future__ import annotations

import json
import os

import pytest
import yaml

from hpo_embed import experiments as ex
from hpo_embed.common import UserError


def test_set_args_quote_lists_and_scalars(tmp_path):
    assert ex.set_args({"mine.sources": ["ontology", "model"], "mine.rounds": 2, "x.flag": True, "y": None}) == [
        "-S", 'mine.sources=["ontology", "model"]', "-S", "mine.rounds=2", "-S", "x.flag=true", "-S", "y=null"]
    # a mapping in Hydra's grammar, applied as `dvc exp run -S` applies it (it refuses quoted
    # keys, and a plain override of an empty {} in params.yaml)
    (arg,) = ex.set_args({"train.language_weights": {"de": 8}})[1:]
    from dvc.utils.hydra import apply_overrides
    params = tmp_path / "params.yaml"
    params.write_text("lr: 1.0e-05\ntrain:\n  language_weights: {}   # comment\n")
    apply_overrides(str(params), [arg])
    assert yaml.safe_load(params.read_text())["train"]["language_weights"] == {"de": 8}


def test_queue_enqueues_each_run_with_copied_inputs_and_waits_for_all(monkeypatch, capsys, tmp_path):
    """`queue`: one `dvc exp run --queue` per run (git-ignored inputs copied along, its -S
    settings, its target or none for the whole pipeline), an experiment of the same name
    replaced, one worker, a poll line with the running run's progress, and the final state
    of each run (an earlier try's row in the queue's table is not this run's state)."""
    old_try = "0ld7a5k  scl-big     10:00 PM   Failed\n"   # an earlier try keeps its row: not this run's state
    calls, polls = [], iter([
        "Task     Name        Created    Status\n" + old_try + "\nWorker status: 0 active, 0 idle\n",
        "Task     Name        Created    Status\nab12cd3  scl-big     11:02 PM   Running\n"
        "ef45ab6  scl-bigger  11:02 PM   Queued\n" + old_try + "\nWorker status: 1 active, 0 idle\n",
        "Task     Name        Created    Status\nab12cd3  scl-big     11:02 PM   Success\n"
        "ef45ab6  scl-bigger  11:02 PM   Failed\n" + old_try + "\nWorker status: 0 active, 1 idle\n"])

    started = {}

    def sh(root, *cmd, capture=True, echo=True):
        assert root == tmp_path
        calls.append(cmd)
        if cmd[:3] == ("dvc", "queue", "logs"):   # polled for the running arm only
            assert cmd[3] == "scl-big"
            return "Running stage 'train':\r  10%|█         | 100/962 [12:42<1:50:42,  7.71s/it]\n"
        if cmd[:3] == ("dvc", "queue", "start"):
            # the worker is a daemon: its output must not be piped (the call would wait for it),
            # and it inherits the checkpoint root that lets a killed arm resume when requeued
            started.update(capture=capture, root=os.environ.get("HPO_EMBED_CHECKPOINT_ROOT"))
        if cmd[:3] == ("dvc", "queue", "status"):
            return next(polls)
        if cmd[:2] == ("git", "ls-files"):
            assert cmd[-2:] == ("--", "data/external")
            return "data/benchmark/cache/\ndata/external/hpo-translations/hp-de.babelon.tsv\n"
        return "scl-big\n" if cmd[:3] == ("dvc", "exp", "list") else ""
    monkeypatch.setattr(ex, "sh", sh)
    monkeypatch.setattr(ex, "COPY_PATHS", ("data/external",))
    monkeypatch.setenv("HPO_EMBED_CHECKPOINT_ROOT", "/before")   # undone after the test: queue() sets it
    states = ex.queue({"scl-big": ({"quantize.method": "dynamic", "lr": 1e-4}, "benchmark"),
                       "scl-bigger": ({"train.max_train_pairs": None}, None)}, tmp_path, poll_s=0)
    assert "queue: scl-big Running (train: 100/962, 12:42 elapsed, 1:50:42 left), scl-bigger Queued" \
        in capsys.readouterr().out
    assert started == {"capture": False, "root": str(tmp_path / "models" / "checkpoints-queue")}
    assert ("dvc", "exp", "remove", "scl-big") in calls and ("dvc", "exp", "remove", "scl-bigger") not in calls
    queued = [c for c in calls if c[:4] == ("dvc", "exp", "run", "--queue")]
    copied = ("-C", "data/benchmark/cache", "-C", "data/external/hpo-translations/hp-de.babelon.tsv")
    assert queued == [
        ("dvc", "exp", "run", "--queue", "-n", "scl-big", *copied,
         "-S", "quantize.method=dynamic", "-S", "lr=0.0001", "benchmark"),
        ("dvc", "exp", "run", "--queue", "-n", "scl-bigger", *copied,
         "-S", "train.max_train_pairs=null")]
    assert calls.index(("dvc", "queue", "start", "-j", "1")) > calls.index(queued[-1])
    assert sum(c[:3] == ("dvc", "queue", "status") for c in calls) == 3   # before queueing + 2 polls
    assert states == {"scl-big": "Success", "scl-bigger": "Failed"}


def test_queue_refuses_inputs_other_than_the_locked_ones(monkeypatch, tmp_path):
    """A fresh clone whose data/external holds only the READMEs: the translate and benchmark
    deps there differ from dvc.lock (`dvc status --json` as DVC writes it), so nothing is
    queued and the one-line error names each folder and its stage; outputs merely missing
    (a fresh clone with the files fetched) are no reason to refuse."""
    fresh = {"translate": [{"changed deps": {"data/hpo/terms.parquet": "deleted",
                                             "data/external/hpo-translations": "modified"}},
                           {"changed outs": {"data/translations": "not in cache"}}],
             "benchmark": [{"changed deps": {"models/finetuned": "deleted",
                                             "data/external/phentrieve-benchmarks/german": "modified"}}],
             "pairs": [{"changed deps": {"data/external/phentrieve-benchmarks/german": "modified"}}]}
    calls = []

    def sh(root, *cmd, capture=True, echo=True):
        calls.append(cmd)
        return json.dumps(status) if cmd[:2] == ("dvc", "status") else ""
    monkeypatch.setattr(ex, "sh", sh)
    status = fresh
    with pytest.raises(UserError) as err:
        ex.queue({"scl-big": ({"lr": 1e-4}, "benchmark")}, tmp_path, poll_s=0)
    assert str(err.value).splitlines() == [str(err.value)]
    assert "data/external/hpo-translations (modified; read by translate)" in str(err.value)
    assert "data/external/phentrieve-benchmarks/german (modified; read by benchmark, pairs)" in str(err.value)
    assert not [c for c in calls if c[:2] != ("dvc", "status")]

    status = {stage: [{"changed deps": {k: v for k, v in entries[0]["changed deps"].items()
                                        if not k.startswith("data/external/")}}] for stage, entries in fresh.items()}
    ex.check_inputs(tmp_path)   # only missing outputs upstream: queueing goes on


def test_progress_names_the_running_stage_and_its_last_bar():
    """The queue's poll line: the stage DVC runs now and that stage's last progress bar
    (tqdm redraws with carriage returns; the encoder's inner "Batches" bars are noise)."""
    assert ex.progress("Reproducing experiment 'scl-big'\n") is None
    log = ("Running stage 'train':\n  5%|▌    | 48/962 [06:00<1:54:00,  7.5s/it]\r"
           "  5%|▌    | 49/962 [06:07<1:53:59,  7.5s/it]\n"
           "Running stage 'benchmark':\n> python -m stages.benchmark\n")
    assert ex.progress(log) == "benchmark"   # a bar of the stage before is not this stage's
    log += ("finetuned: corpus:  43%|████▎     | 16384/38051 [01:29<01:43, 209.1text/s]\r"
            "Batches:  50%|█████     | 2/4 [00:01<00:01,  1.37it/s]\n")
    assert ex.progress(log) == "benchmark: finetuned: corpus 16384/38051, 01:29 elapsed, 01:43 left"
