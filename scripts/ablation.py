"""A study of arms (issue 15's hard-negative ablation, issue 25's scaling study): one
`dvc exp run` per arm, then a table (and, for a study with ``plot:``, a PNG).

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
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # hpo_embed (params, statistics) when run as a script
from hpo_embed.common import UserError  # noqa: E402
from hpo_embed.experiments import exp_rev, read_at  # noqa: E402
from hpo_embed.markdown import fill_section, marks  # noqa: E402
CONFIG = ROOT / "configs" / "ablation.yaml"
README = ROOT / "README.md"
QUEUE_CHECKPOINTS = ROOT / "models" / "checkpoints-queue"   # HPO_EMBED_CHECKPOINT_ROOT of queued arms
LANG_NAMES = {"de": "German", "fr": "French", "es": "Spanish", "en": "English syn.", "all": "all"}


@dataclass(frozen=True)
class Study:
    """A study's config (configs/<name>.yaml) and where its results live: ``out`` =
    reports/<name>/ holds each arm's saved results, reports/<name>.md (and .png) the tables,
    the README section between ``<!-- <readme_mark>:start/end -->`` the short table."""
    config: dict
    out: Path

    @classmethod
    def load(cls, path: Path) -> Study:
        config = yaml.safe_load(path.read_text())
        return cls(config, ROOT / "reports" / config.get("name", "ablation"))

    @property
    def section(self) -> str:
        return self.config.get("readme_mark", "negatives-ablation")

    @property
    def mode(self) -> str:   # the retrieval mode whose numbers are compared
        return self.config.get("mode", "multi")

    def title(self, arm: str) -> str:
        return self.config.get("titles", {}).get(arm, arm)

    def exp_name(self, arm: str) -> str:
        return f"{self.config.get('prefix', 'abl')}-{arm}"

    def settings(self, arm: str) -> dict:
        """The parameters an arm sets: the study's shared ones, then its own."""
        return {**self.config.get("common", {}), **self.config["arms"][arm]}

    def results(self, arms: list[str] | None = None) -> dict[str, dict]:
        """The saved results of ``arms`` (default: every arm of the config) that have run,
        in the config's order."""
        wanted = list(self.config["arms"]) if arms is None else arms
        return {arm: json.loads((self.out / f"{arm}.json").read_text())
                for arm in wanted if (self.out / f"{arm}.json").exists()}

    def per_query(self, arm: str):
        import pandas as pd
        f = self.out / f"{arm}.per_query.parquet"
        return pd.read_parquet(f) if f.is_file() else None


def sh(*cmd: str, capture: bool = True) -> str:
    """Run ``cmd`` in the repository; its stdout (``capture``; without it the output is
    dropped: a command that leaves a daemon behind, which would hold a pipe open)."""
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
    along), one worker (`dvc queue start`: arms never share the two cores), wait, collect.
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
        states = queue_states(sh("dvc", "queue", "status"), names, earlier)
        print("queue:", ", ".join(f"{n} {s}" for n, s in sorted(states.items())), flush=True)
        if all(s not in ("Queued", "Running") for s in states.values()):
            break
        time.sleep(poll_s)
    failed = [n for n, s in states.items() if s != "Success"]
    if failed:
        print(f"warning: {failed} did not succeed (`dvc queue logs <name>` says why); "
              "collecting the others", file=sys.stderr)
    collect([arm for arm in arms if states.get(study.exp_name(arm)) == "Success"], study)


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
    study.out.mkdir(parents=True, exist_ok=True)
    (study.out / f"{arm}.json").write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    pq = pd.read_parquet(io.BytesIO(read("data/benchmark/per_query.parquet")),
                         columns=["retrieval", "model", "set", "lang", "query", "mrr", "hr@1"])
    pq = pq[pq["model"] == "finetuned"].drop(columns="model").reset_index(drop=True)
    pq.to_parquet(study.out / f"{arm}.per_query.parquet", index=False, compression="zstd")


def paired(arm_rows, base_rows, mode: str, key: str, resamples: int, seed: int) -> dict | None:
    """MRR of ``arm`` minus the baseline's on the same queries of set ``key`` (mode's
    retrieval): mean difference, bootstrap 95% CI, paired permutation p. None when either
    arm has no per-query file."""
    if arm_rows is None or base_rows is None:
        return None
    from hpo_embed.retrieval.metrics import paired_diff
    held = key.startswith("heldout.")   # heldout.<lang>: set heldout, that language; else the set's key
    pick = []
    for df in (arm_rows, base_rows):
        sub = df[(df["retrieval"] == mode) & (df["set"] == ("heldout" if held else key))]
        pick.append(sub[sub["lang"] == key.split(".", 1)[1]] if held else sub)
    a, b = pick
    if list(a["query"]) != list(b["query"]):
        sys.exit(f"error: {key}: the arms were scored on different queries; rerun both arms")
    return paired_diff(a["mrr"].to_numpy(), b["mrr"].to_numpy(), resamples, seed)


def stats_params() -> tuple[int, int]:
    """The benchmark stage's bootstrap settings (params.yaml benchmark.*)."""
    from hpo_embed.params import load_params
    bp = load_params(ROOT / "params.yaml").benchmark
    return bp.bootstrap_resamples, bp.seed


def delta_cell(d: dict | None) -> str:
    if d is None:
        return "–"
    p = d["p_value"]
    return f"{d['diff']:+.3f} [{d['diff_ci_low']:+.3f}, {d['diff_ci_high']:+.3f}] p={p:.3f}"


def adopt(arm: str, study: Study) -> None:
    """Take the arm's numbers from the workspace's own `dvc repro` when params.yaml already is
    that arm (the default run): the shared cheap settings change nothing the table shows."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in study.config["arms"][arm].items():
        have = raw
        for part in key.split("."):   # lr, train.max_train_pairs
            have = (have or {}).get(part)
        if have != value:
            sys.exit(f"error: params.yaml has {key}={have!r}, arm {arm} needs {value!r}")
    if "dvc.lock" in sh("git", "status", "--porcelain", "dvc.lock"):
        sys.exit("error: dvc.lock has uncommitted changes: commit the `dvc repro` run first")
    save_arm(study, arm, "dvc repro (default params)", settings=study.config["arms"][arm])


def rows(report: dict, mode: str) -> list[tuple[str, str]]:
    keys = sorted({".".join(k.split(".")[1:3]) for k in report
                   if k.startswith(f"{mode}.") and k.endswith(".finetuned.mrr") and k.count(".") == 4})
    order = {lang: i for i, lang in enumerate(("de", "fr", "es", "en", "all"))}
    held = sorted((k for k in keys if k.startswith("heldout.")), key=lambda k: order.get(k.split(".")[1], 99))
    ext = sorted(k for k in keys if not k.startswith("heldout.") and ".branch." not in k)
    return [(k, f"held-out {LANG_NAMES.get(k.split('.')[1], k.split('.')[1])}") for k in held] + \
           [(k, k.replace("phentrieve.", "")) for k in ext]


def cell(report: dict, key: str, metric: str) -> str:
    v = report.get(f"{key}.{metric}")
    if v is None:
        return "–"
    lo, hi = report.get(f"{key}.{metric}_ci_low"), report.get(f"{key}.{metric}_ci_high")
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{v:.3f}"


def table(study: Study) -> str:
    config, mode, found = study.config, study.mode, study.results()
    if not found:
        sys.exit(f"error: no arm results under {study.out}; run `python scripts/ablation.py run` first")
    first = next(iter(found.values()))["benchmark"]
    arms = list(found)
    cli = "python scripts/ablation.py" + ("" if config.get("name", "ablation") == "ablation" else f" --config configs/{config['name']}.yaml")
    lines = [f"Fine-tuned model, {mode}-vector retrieval, training: {config['steps']}; MRR and HR@1 with bootstrap 95% CIs; n = queries. Regenerate: "
             f"`{cli} run && {cli} table`.", ""]
    lines.append("| query set | metric | " + " | ".join(study.title(a) for a in arms) + " |")
    lines.append("|---|---|" + "---|" * len(arms))
    for key, title in rows(first, mode):
        n = first.get(f"{mode}.{key}.finetuned.n_queries", "")
        # MaxOntSim@5: how near (in the ontology) the top 5 come to the gold term, so an arm whose
        # misses move to relatives shows here even where MRR does not move
        for metric, name in (("mrr", "MRR"), ("hr@1", "HR@1"), ("maxontsim@5", "MaxOntSim@5")):
            cells = [cell(found[a]["benchmark"], f"{mode}.{key}.finetuned", metric) for a in arms]
            lines.append(f"| {title} ({n}) | {name} | " + " | ".join(cells) + " |")
    base = config.get("baseline", arms[0])
    if base in found and len(arms) > 1:   # each arm's MRR minus the baseline's, paired per query
        resamples, seed = stats_params()
        rows_of = {a: study.per_query(a) for a in arms}
        for key, title in rows(first, mode):
            n = first.get(f"{mode}.{key}.finetuned.n_queries", "")
            cells = ["(baseline)" if a == base else
                     delta_cell(paired(rows_of[a], rows_of[base], mode, key, resamples, seed)) for a in arms]
            lines.append(f"| {title} ({n}) | Δ MRR vs {study.title(base)} | " + " | ".join(cells) + " |")
    sources = [f"- {study.title(a)}: `{found[a]['experiment']}` at commit {found[a]['base_commit'][:7]}"
               for a in arms]
    dev = [f"{found[a]['train']['dev_mrr_best']:.3f}" for a in arms]
    lines.append("| dev sample (train stage) | MRR | " + " | ".join(dev) + " |")
    secs = [f"{found[a]['train']['train_time_s']:.0f}" for a in arms]
    lines.append("| training time, s (both rounds; 2 idle cores) | | " + " | ".join(secs) + " |")
    if config.get("plot"):   # a scaling study: its x axes, and each arm against the untuned base
        pairs = [f"{found[a]['train'].get('pairs', '–')}" + epochs_note(found[a]["train"]) for a in arms]
        lines.append("| training pairs | | " + " | ".join(pairs) + " |")
        for key, title in rows(first, mode):
            cells = [delta_cell(vs_base(found[a]["benchmark"], mode, key)) for a in arms]
            lines.append(f"| {title} | Δ MRR vs untuned base | " + " | ".join(cells) + " |")
    lines += steps(study, found)
    lines += ["", "Where each arm's numbers come from:", *sources]
    return "\n".join(lines) + "\n"


def steps(study: Study, found: dict) -> list[str]:
    """The study's one-factor steps (config ``parent: {arm: the arm it changes one factor of}``):
    each step's MRR change, paired per query, on the plotted sets. A step whose CI includes 0
    is where that axis stops paying at this precision."""
    mode = study.mode
    done = [(a, b) for a, b in (study.config.get("parent") or {}).items() if a in found and b in found]
    if not done:
        return []
    resamples, seed = stats_params()
    first = next(iter(found.values()))["benchmark"]
    sets = [k for k in PLOT_SETS if f"{mode}.{k}.finetuned.mrr" in first]
    out = ["", "**One-factor steps** (Δ MRR of each arm minus the arm it changes one factor of, paired per query, "
           "95% CI, permutation p):", "", "| step | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for arm, parent in done:
        a, b = study.per_query(arm), study.per_query(parent)
        out.append(f"| {study.title(parent)} → {study.title(arm)} | " +
                   " | ".join(delta_cell(paired(a, b, mode, k, resamples, seed)) for k in sets) + " |")
    return out


def epochs_note(train: dict) -> str:
    """' x 2 epochs' for an arm that saw its rows more than once (arms saved before epochs
    were recorded ran one)."""
    epochs = train.get("epochs", 1.0)
    return "" if round(epochs, 2) == 1 else f" x {epochs:g} epochs"


def pairs_seen(train: dict) -> float:
    """Training rows times epochs: the plot's x axis (an arm of 2 epochs over 25.6k rows sits at 51.2k)."""
    return train["pairs"] * train.get("epochs", 1.0)


def vs_base(report: dict, mode: str, key: str) -> dict | None:
    """The benchmark stage's own paired fine-tuned − base comparison on set ``key``."""
    prefix = f"{mode}.{key}.finetuned_vs_base."
    if prefix + "mrr_diff" not in report:
        return None
    return {"diff": report[prefix + "mrr_diff"], "diff_ci_low": report[prefix + "mrr_diff_ci_low"],
            "diff_ci_high": report[prefix + "mrr_diff_ci_high"], "p_value": report[prefix + "p_value"]}


PLOT_SETS = ("heldout.de", "heldout.all", "phentrieve.70cases_gemini_v1", "phentrieve.70cases_o3_v1")


def plot(study: Study, path: Path) -> bool:
    """MRR (95% CI) of each set against training pairs and against training minutes, one
    point per arm run; the arms of ``plot_line`` (one axis of the study, e.g. the pairs steps)
    joined by a line, every other arm an unjoined cross (it changes another factor). False
    (nothing written) without matplotlib or with fewer than 2 arms."""
    found = study.results()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    if len(found) < 2:
        return False
    mode = study.mode
    line = [a for a in study.config.get("plot_line", list(found)) if a in found]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (xlabel, xof) in zip(axes, (("training pairs seen (rows x epochs)", lambda r: pairs_seen(r["train"])),
                                        ("training minutes (2 cores)", lambda r: r["train"]["train_time_s"] / 60))):
        for key in PLOT_SETS:
            def points(arms):
                pts = sorted((xof(found[a]), found[a]["benchmark"].get(f"{mode}.{key}.finetuned.mrr"),
                              found[a]["benchmark"].get(f"{mode}.{key}.finetuned.mrr_ci_low"),
                              found[a]["benchmark"].get(f"{mode}.{key}.finetuned.mrr_ci_high")) for a in arms)
                return [p for p in pts if p[1] is not None]
            color = None
            for arms, style in ((line, {"marker": "o"}), ([a for a in found if a not in line], {"marker": "x", "ls": "none"})):
                pts = points(arms)
                if not pts:
                    continue
                x, y, lo, hi = zip(*pts)
                bar = ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]],
                                  capsize=3, color=color, label=key.replace("phentrieve.", "") if color is None else None,
                                  **style)
                color = bar.lines[0].get_color()
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"fine-tuned MRR ({mode}-vector, 95% CI)")
    axes[1].legend(fontsize=8)
    joined = ", ".join(study.title(a) for a in line)
    fig.suptitle(f"{study.config.get('title', 'study')}: line = {joined}; x = the other arms", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


README_SETS = ("heldout.de", "heldout.fr", "heldout.es", "phentrieve.70cases_gemini_v1", "phentrieve.70cases_o3_v1")


def compact(study: Study) -> str:
    """The README's table: one row per arm (``readme_arms``, default all; the others are named
    below it), MRR / HR@1 per set (CIs: reports/<name>.md)."""
    config, mode = study.config, study.mode
    shown = config.get("readme_arms") or list(config["arms"])
    done = list(study.results())
    found = study.results([arm for arm in shown if arm in done])
    first = next(iter(found.values()))["benchmark"]
    sets = [k for k in README_SETS if f"{mode}.{k}.finetuned.mrr" in first]
    names = [k.split(".")[1].replace("70cases_", "").replace("_v1", "") for k in sets]
    base = config.get("baseline", next(iter(found)))
    pooled = "heldout.all"
    lines = [f"MRR / HR@1 (fine-tuned, {mode}-vector, {config['steps']}); Δ MRR vs "
             f"{study.title(base)} on all held-out queries, paired (95% CI, p); more: "
             f"[reports/{study.out.name}.md](reports/{study.out.name}.md).", "",
             f"| {config.get('arm_column', 'negatives')} | " + " | ".join(names) + " | Δ MRR held-out |", "|---|" + "---|" * (len(sets) + 1)]
    resamples, seed = stats_params()
    base_rows = study.per_query(base) if base in done else None
    for arm, res in found.items():
        b = res["benchmark"]
        cells = [f"{b[f'{mode}.{k}.finetuned.mrr']:.3f} / {b[f'{mode}.{k}.finetuned.hr@1']:.3f}" for k in sets]
        cells.append("–" if arm == base else delta_cell(paired(study.per_query(arm), base_rows, mode, pooled, resamples, seed)))
        lines.append(f"| {study.title(arm)} | " + " | ".join(cells) + " |")
    elsewhere = [study.title(a) for a in done if a not in shown]
    if elsewhere:
        lines += ["", f"Also measured (reports/{study.out.name}.md): " + "; ".join(elsewhere) + "."]
    missing = [study.title(a) for a in config["arms"] if a not in done]
    if missing:
        lines += ["", "Not run yet: " + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def write_table(study: Study, readme_path: Path | None = None) -> None:
    """reports/<name>.md (and its plot) and the study's README section (``readme_path``,
    default README.md, where it has the section's marks)."""
    text = table(study)
    report = study.out.with_suffix(".md")
    png = study.out.with_suffix(".png")
    if study.config.get("plot") and plot(study, png):
        text += f"\n![MRR against training pairs and minutes]({png.name})\n"
    # the reading of the numbers (where a curve flattens, what was not run) is written by a
    # person between these marks and kept when the tables are regenerated
    notes = ""
    if report.is_file():
        m = re.search(r"<!-- notes:start -->.*?<!-- notes:end -->\n", report.read_text(), flags=re.S)
        notes = m.group(0) + "\n" if m else ""
    report.write_text(f"# {study.config.get('title', 'Hard-negative ablation')}\n\n" + notes + text)
    readme_path = readme_path or README
    readme = readme_path.read_text()
    if marks(study.section)[0] in readme:
        readme_path.write_text(fill_section(readme, study.section, compact(study), str(readme_path)))
    print(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=CONFIG, help="the study (default configs/ablation.yaml)")
    ap.add_argument("command", choices=("run", "queue", "collect", "adopt", "table"),
                    help="run: dvc exp run per arm in the workspace; queue: the same through DVC's queue "
                         "(one worker), then collect; collect: results of finished experiments; "
                         "adopt: take the arm from the committed default dvc repro; table")
    ap.add_argument("arms", nargs="*", help="arms to run (default: all of configs/ablation.yaml)")
    a = ap.parse_args(argv)
    study = Study.load(a.config)
    known = list(study.config["arms"])
    unknown = [x for x in a.arms if x not in known]
    if unknown:
        sys.exit(f"error: {a.config}: unknown arm(s) {unknown}; known: {known}")
    try:
        if a.command in ("run", "queue", "collect"):
            {"run": run, "queue": queue, "collect": collect}[a.command](a.arms or known, study)
        elif a.command == "adopt":
            for arm in a.arms:
                adopt(arm, study)
    except UserError as e:
        sys.exit(f"error: {e}")
    write_table(study)


if __name__ == "__main__":
    main()
