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

``queue`` runs the arms through hpo_embed.experiments.queue, which points their trainers at
one checkpoint root outside DVC's temporary copies (models/checkpoints-queue/<fingerprint>,
``HPO_EMBED_CHECKPOINT_ROOT``): an arm whose worker was killed resumes from its last
checkpoint when it is queued again (the same command).

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
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # hpo_embed (params, statistics) when run as a script
from hpo_embed import experiments  # noqa: E402
from hpo_embed.common import UserError  # noqa: E402
from hpo_embed.experiments import exp_rev, read_at, set_args  # noqa: E402
from hpo_embed.study import Study, write_reports  # noqa: E402
CONFIG = ROOT / "configs" / "ablation.yaml"


def sh(*cmd: str, capture: bool = True, echo: bool = True) -> str:
    """``cmd`` run in the repository (hpo_embed.experiments.sh)."""
    return experiments.sh(ROOT, *cmd, capture=capture, echo=echo)


def restore(study_out: Path) -> None:
    """Back to the commit's params, lock and outputs (the experiment keeps the arm's)."""
    study = study_out.relative_to(ROOT).as_posix()
    keep = ("README.md", f"{study}.md", f"{study}.png")   # and the arms' own results under reports/<name>/
    changed = [f for f in sh("git", "diff", "--name-only").split()
               if f not in keep and not f.startswith(f"{study}/")]
    if changed:   # params.yaml, dvc.lock, metrics, reports and git-tracked plots of the arm
        sh("git", "checkout", "--", *changed)
    sh("dvc", "checkout", "--force", "--quiet")


def run(arms: list[str], study: Study) -> None:
    """Each arm in the workspace, one after the other: an interrupted arm, started again,
    resumes its training from models/checkpoints (the train stage's own resume). Refused, like
    ``queue``, when data/external is not what dvc.lock records (experiments.check_inputs)."""
    experiments.check_inputs(ROOT)
    for arm in arms:
        name = study.exp_name(arm)
        sh("dvc", "exp", "remove", name) if name in sh("dvc", "exp", "list", "--name-only") else None
        sh("dvc", "exp", "run", "-n", name, *set_args(study.settings(arm)), study.config.get("target", "benchmark"))
        save_arm(study, arm, name)
        restore(study.out)


def queue(arms: list[str], study: Study, poll_s: float = 60.0) -> None:
    """Every arm through DVC's queue (hpo_embed.experiments.queue: one worker, the workspace
    stays free, a killed arm resumes from its checkpoint when queued again), then collect
    the arms that succeeded."""
    target = study.config.get("target", "benchmark")
    states = experiments.queue({study.exp_name(arm): (study.settings(arm), target) for arm in arms}, ROOT, poll_s)
    collect([arm for arm in arms if states.get(study.exp_name(arm)) == "Success"], study)


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
