"""A study of arms (issue 15's hard-negative ablation, issue 25's scaling study): one
`dvc exp run` per arm, then a table (and, for a study with ``plot:``, a PNG). This script
runs, queues and collects the arms; the tables and the plot are hpo_embed.study's.

A config (default configs/ablation.yaml; ``--config configs/scaling.yaml``) names the study
(``name``: reports/<name>.md, reports/<name>/ for the arms' files, the README section
between ``<!-- <readme_mark>:start/end -->``; ``readme_arms``: its rows, default all), the
arms and the settings they share. Every arm is a workspace experiment of the real pipeline
up to the benchmark stage, named ``<prefix>-<arm>``:

    python scripts/ablation.py run            # all arms, one after the other (~15 min each on 2 cores)
    python scripts/ablation.py run mined      # one arm
    python scripts/ablation.py table          # reports/ablation.md + the README section
    python scripts/ablation.py --config configs/scaling.yaml run pairs_26k   # make scaling
    python scripts/ablation.py --config configs/scaling.yaml queue pairs_26k pairs_all  # via dvc queue

``queue`` points the arms' trainers at one checkpoint root outside DVC's temporary copies
(models/checkpoints-queue/<fingerprint>, ``HPO_EMBED_CHECKPOINT_ROOT``): an arm whose worker
was killed resumes from its last checkpoint when it is queued again (the same command).

``run`` restores params.yaml, dvc.lock and the outputs of the current commit after every arm
(the arm's results stay in its experiment ref), and copies the arm's benchmark report to
reports/ablation/<arm>.json together with the experiment's name and parameters, and the
fine-tuned model's per-query values to reports/ablation/<arm>.per_query.parquet, so the
table is rebuilt from committed files. The numbers are the benchmark stage's own (MRR and
HR@1 with bootstrap 95% CIs over the held-out test concepts and the phentrieve files); the
difference of each arm to the baseline arm is paired per query (the same queries: bootstrap
CI of the mean difference and a paired permutation test, hpo_embed.retrieval.metrics).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # hpo_embed (params, statistics) when run as a script
from hpo_embed.common import UserError  # noqa: E402
from hpo_embed.experiments import exp_rev, read_at  # noqa: E402
from hpo_embed.study import Study, write_reports  # noqa: E402
CONFIG = ROOT / "configs" / "ablation.yaml"
QUEUE_CHECKPOINTS = ROOT / "models" / "checkpoints-queue"   # HPO_EMBED_CHECKPOINT_ROOT of queued arms


def sh(*cmd: str, capture: bool = True, echo: bool = True) -> str:
    """Run ``cmd`` in the repository; its stdout (``capture``; without it the output is
    dropped: a command that leaves a daemon behind, which would hold a pipe open).
    ``echo``: print the command first (off for the queue's polls)."""
    if echo:
        print("+", " ".join(cmd), flush=True)
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.run(cmd, cwd=ROOT, check=True, text=True, stdout=out).stdout or ""


def set_args(settings: dict) -> list[str]:
    """``-S key=value`` in the override grammar `dvc exp run` parses (Hydra's: JSON lists
    pass; a mapping needs bare keys, ``{de: 8}``, and ``++`` to replace an empty ``{}``)."""
    def text(value) -> str:
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {text(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return json.dumps(value)
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return [arg for key, value in settings.items()
            for arg in ("-S", f"{'++' if isinstance(value, dict) else ''}{key}={text(value)}")]


def restore(study_out: Path) -> None:
    """Back to the commit's params, lock and outputs (the experiment keeps the arm's)."""
    study = study_out.relative_to(ROOT).as_posix()
    keep = ("README.md", f"{study}.md", f"{study}.png")   # and the arms' own results under reports/<name>/
    changed = [f for f in sh("git", "diff", "--name-only").split()
               if f not in keep and not f.startswith(f"{study}/")]
    if changed:   # params.yaml, dvc.lock, metrics, reports and git-tracked plots of the arm
        sh("git", "checkout", "--", *changed)
    sh("dvc", "checkout", "--force", "--quiet")


# Git-ignored inputs a queued arm needs in its temporary copy of the repository: the
# optional downloaded files (translate and benchmark deps) and the embedding caches.
COPY_PATHS = ("data/external", "data/benchmark/cache", "data/cache")


def run(arms: list[str], study: Study) -> None:
    """Each arm in the workspace, one after the other: an interrupted arm, started again,
    resumes its training from models/checkpoints (the train stage's own resume)."""
    for arm in arms:
        name = study.exp_name(arm)
        sh("dvc", "exp", "remove", name) if name in sh("dvc", "exp", "list", "--name-only") else None
        sh("dvc", "exp", "run", "-n", name, *set_args(study.settings(arm)), study.config.get("target", "benchmark"))
        save_arm(study, arm, name)
        restore(study.out)


def queue(arms: list[str], study: Study, poll_s: float = 60.0) -> None:
    """Every arm into DVC's queue (`dvc exp run --queue`, the git-ignored inputs copied
    along), one worker (`dvc queue start`: arms never share the two cores), wait (a line
    each poll: every arm's state, and the running arm's stage and progress), collect.
    The workspace stays free for other work; a queued arm runs in a temporary copy, so
    its trainers keep their checkpoints under QUEUE_CHECKPOINTS (the worker inherits
    HPO_EMBED_CHECKPOINT_ROOT), so queueing a killed arm again resumes it."""
    copy = [arg for path in ignored(COPY_PATHS) for arg in ("-C", path)]
    os.environ["HPO_EMBED_CHECKPOINT_ROOT"] = str(QUEUE_CHECKPOINTS)
    known = sh("dvc", "exp", "list", "--name-only")
    names = {study.exp_name(arm) for arm in arms}
    earlier = task_ids(sh("dvc", "queue", "status"), names)   # failed tries of these arms keep their rows
    for arm in arms:
        name = study.exp_name(arm)
        sh("dvc", "exp", "remove", name) if name in known else None
        sh("dvc", "exp", "run", "--queue", "-n", name, *copy, *set_args(study.settings(arm)),
           study.config.get("target", "benchmark"))
    sh("dvc", "queue", "start", "-j", "1", capture=False)   # its worker daemon outlives the call
    while True:
        states = queue_states(sh("dvc", "queue", "status", echo=False), names, earlier)
        line = []
        for name, state in sorted(states.items()):
            where = progress(sh("dvc", "queue", "logs", name, echo=False)) if state == "Running" else None
            line.append(f"{name} {state}" + (f" ({where})" if where else ""))
        print("queue:", ", ".join(line), flush=True)
        if all(s not in ("Queued", "Running") for s in states.values()):
            break
        time.sleep(poll_s)
    failed = [n for n, s in states.items() if s != "Success"]
    if failed:
        print(f"warning: {failed} did not succeed (`dvc queue logs <name>` says why); "
              "collecting the others", file=sys.stderr)
    collect([arm for arm in arms if states.get(study.exp_name(arm)) == "Success"], study)


STAGE = re.compile(r"^Running stage '([^']+)'", re.M)
BAR = re.compile(r"^(?:(.*?):)? *\d+%\|[^|\n]*\| *(\d+)/(\d+) \[([\d:]+)<([\d:?]+)", re.M)


def progress(log: str) -> str | None:
    """Where a running arm is, from its `dvc queue logs`: the stage DVC runs and its last
    progress bar ("train: 105/962, 13:20 elapsed, 1:53:01 left"; the encoder's inner
    "Batches" bars are passed over); None before the first stage."""
    log = log.replace("\r", "\n")   # tqdm redraws a bar in place
    stages = list(STAGE.finditer(log))
    if not stages:
        return None
    stage = stages[-1]
    bars = [b for b in BAR.finditer(log, stage.end()) if b.group(1) != "Batches"]
    if not bars:
        return stage.group(1)
    label, done, total, elapsed, left = bars[-1].groups()
    return f"{stage.group(1)}: {label + ' ' if label else ''}{done}/{total}, {elapsed} elapsed, {left} left"


def ignored(paths: tuple[str, ...]) -> list[str]:
    """The git-ignored files and wholly ignored folders under ``paths``: what `--copy-paths`
    must name (DVC copies a folder only where the temporary copy has none, and these folders
    hold tracked READMEs)."""
    listing = sh("git", "ls-files", "--others", "--ignored", "--exclude-standard", "--directory", "--", *paths)
    return [line.rstrip("/") for line in listing.splitlines() if line.strip()]


def queue_rows(status: str, names: set[str]) -> list[tuple[str, str, str]]:
    """(task id, name, state) of the named experiments in `dvc queue status`'s table
    (Task Name Created Status)."""
    return [(w[0], w[1], w[-1]) for w in map(str.split, status.splitlines()) if len(w) >= 3 and w[1] in names]


def queue_states(status: str, names: set[str], ignore: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
    """Status of each named experiment, skipping the tasks in ``ignore`` (an earlier,
    finished try of the same arm keeps its row)."""
    return {name: state for task, name, state in queue_rows(status, names) if task not in ignore}


def task_ids(status: str, names: set[str]) -> set[str]:
    """The task ids of the named experiments in `dvc queue status`'s table."""
    return {task for task, _, _ in queue_rows(status, names)}


def collect(arms: list[str], study: Study) -> None:
    """reports/<study>/<arm>.* from finished experiments, read from each experiment's commit
    (git for its metrics and reports, the DVC cache for its per-query table): the workspace
    is not touched, so collecting works while other arms run, and outputs of stages the arm
    did not run (rerank, release) need not be in the cache."""
    for arm in arms:
        name = study.exp_name(arm)
        rev = exp_rev(name, ROOT)
        save_arm(study, arm, name, read=lambda path, rev=rev: read_at(rev, path, ROOT),
                 base_commit=sh("git", "rev-parse", f"{rev}^").strip())


def read_workspace(path: str) -> bytes | None:
    f = ROOT / path
    return f.read_bytes() if f.is_file() else None


def save_arm(study: Study, arm: str, experiment: str, read=read_workspace, base_commit: str | None = None,
             settings: dict | None = None) -> None:
    """reports/<study>/<arm>.json and <arm>.per_query.parquet from an arm's benchmark, train
    and mine outputs (``read``: the workspace's files by default, or an experiment's;
    ``settings``: what the arm set, by default the study's settings of the arm)."""
    import io

    import pandas as pd
    report = json.loads(read("reports/benchmark.json"))
    train = json.loads(read("metrics/train.json"))
    train_report = json.loads(read("reports/train.json"))
    train |= {"pairs": train_report["pairs"], "pairs_by_language": train_report["pairs_by"]["languages"],
              "epochs": train_report.get("epochs", 1.0)}
    mine = read("metrics/mine.json")
    payload = {"arm": arm, "experiment": experiment,
               "base_commit": base_commit or sh("git", "rev-parse", "HEAD").strip(),
               "settings": study.settings(arm) if settings is None else settings, "train": train, "mine": json.loads(mine) if mine else None,
               "benchmark": {k: v for k, v in report.items()
                             if ".finetuned." in k or ".finetuned_vs_base." in k or k.endswith("n_queries")}}
    pq = pd.read_parquet(io.BytesIO(read("data/benchmark/per_query.parquet")),
                         columns=["retrieval", "model", "set", "lang", "query", "mrr", "hr@1"])
    study.save(arm, payload, pq[pq["model"] == "finetuned"].drop(columns="model").reset_index(drop=True))


def adopt(arm: str, study: Study) -> None:
    """Take the arm's numbers from the workspace's own `dvc repro` when params.yaml already is
    that arm (the default run): the shared cheap settings change nothing the table shows."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in study.config["arms"][arm].items():
        have = raw
        for part in key.split("."):   # lr, train.max_train_pairs
            have = (have or {}).get(part)
        if have != value:
            raise UserError(f"params.yaml has {key}={have!r}, arm {arm} needs {value!r}")
    if "dvc.lock" in sh("git", "status", "--porcelain", "dvc.lock"):
        raise UserError("dvc.lock has uncommitted changes: commit the `dvc repro` run first")
    save_arm(study, arm, "dvc repro (default params)", settings=study.config["arms"][arm])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=CONFIG, help="the study (default configs/ablation.yaml)")
    ap.add_argument("command", choices=("run", "queue", "collect", "adopt", "table"),
                    help="run: dvc exp run per arm in the workspace; queue: the same through DVC's queue "
                         "(one worker), then collect; collect: results of finished experiments; "
                         "adopt: take the arm from the committed default dvc repro; table")
    ap.add_argument("arms", nargs="*", help="arms to run (default: all of configs/ablation.yaml)")
    a = ap.parse_args(argv)
    try:
        study = Study.load(a.config)
        known = list(study.config["arms"])
        unknown = [x for x in a.arms if x not in known]
        if unknown:
            raise UserError(f"{a.config}: unknown arm(s) {unknown}; known: {known}")
        if a.command in ("run", "queue", "collect"):
            {"run": run, "queue": queue, "collect": collect}[a.command](a.arms or known, study)
        elif a.command == "adopt":
            for arm in a.arms:
                adopt(arm, study)
        write_reports(study)
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
