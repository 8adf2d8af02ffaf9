"""A study of arms, reported: its config, the arms' saved results and the tables and plot
built from them (scripts/ablation.py runs the arms and saves their results here).

A study config (configs/ablation.yaml, configs/scaling.yaml) names the study (``name``:
reports/<name>.md and .png, reports/<name>/ for the arms' saved results; ``readme_mark``: the
README section between ``<!-- <mark>:start/end -->``; ``readme_arms``: its rows), its arms and
the settings they share, the ``baseline`` arm every arm is paired with, and for a scaling
study ``parent`` (the arm each arm changes one factor of) and ``plot``. Every difference is
paired per query on the same queries (bootstrap CI of the mean difference and a paired
permutation test, hpo_embed.retrieval.metrics); the numbers themselves are the benchmark
stage's own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from hpo_embed.common import ROOT, UserError
from hpo_embed.markdown import fill_section, marks, read_section
from hpo_embed.params import load_params
from hpo_embed.retrieval.metrics import paired_diff

README = ROOT / "README.md"
LANG_NAMES = {"de": "German", "fr": "French", "es": "Spanish", "en": "English syn.", "all": "all"}
HELDOUT_LANG_ORDER = ("de", "fr", "es", "en", "all")   # the held-out rows of every table, in this order


def report_sets(report: dict, mode: str, model: str) -> list[str]:
    """The query sets ``model`` was scored on in ``mode`` in a benchmark.json report (keys
    ``<mode>.<set>.<model>.mrr``): ``heldout.<lang>`` in HELDOUT_LANG_ORDER, then the
    external sets (``phentrieve.<file>``) by name. Per-branch rows are not sets here. The one
    order of the tables built from that report (the study tables, the README results)."""
    keys = {".".join(k.split(".")[1:3]) for k in report
            if k.startswith(f"{mode}.") and k.endswith(f".{model}.mrr") and k.count(".") == 4}
    order = {lang: i for i, lang in enumerate(HELDOUT_LANG_ORDER)}
    held = sorted((k for k in keys if k.startswith("heldout.")), key=lambda k: (order.get(k.split(".")[1], 99), k))
    return held + sorted(k for k in keys if not k.startswith("heldout."))


@dataclass(frozen=True)
class Study:
    """A study's config (configs/<name>.yaml) and where its results live: ``out`` =
    reports/<name>/ holds each arm's saved results, reports/<name>.md (and .png) the tables,
    the README section between ``<!-- <readme_mark>:start/end -->`` the short table."""
    config: dict
    out: Path

    @classmethod
    def load(cls, path: Path) -> Study:
        if not path.is_file():
            raise UserError(f"{path}: no such study config (configs/ablation.yaml, configs/scaling.yaml)")
        config = yaml.safe_load(path.read_text())
        if not isinstance(config, dict) or not isinstance(config.get("arms"), dict):
            raise UserError(f"{path}: a study config needs an `arms:` mapping (arm: its -S settings)")
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

    def per_query(self, arm: str) -> pd.DataFrame | None:
        f = self.out / f"{arm}.per_query.parquet"
        return pd.read_parquet(f) if f.is_file() else None

    def save(self, arm: str, result: dict, per_query: pd.DataFrame) -> None:
        """An arm's results, as ``results`` and ``per_query`` read them back."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{arm}.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        per_query.to_parquet(self.out / f"{arm}.per_query.parquet", index=False, compression="zstd")


def paired_mrr(arm_rows, base_rows, mode: str, key: str, resamples: int, seed: int) -> dict | None:
    """MRR of ``arm`` minus the baseline's on the same queries of set ``key`` (mode's
    retrieval): mean difference, bootstrap 95% CI, paired permutation p. None when either
    arm has no per-query file."""
    if arm_rows is None or base_rows is None:
        return None
    held = key.startswith("heldout.")   # heldout.<lang>: set heldout, that language; else the set's key
    pick = []
    for df in (arm_rows, base_rows):
        sub = df[(df["retrieval"] == mode) & (df["set"] == ("heldout" if held else key))]
        pick.append(sub[sub["lang"] == key.split(".", 1)[1]] if held else sub)
    a, b = pick
    if list(a["query"]) != list(b["query"]):
        raise UserError(f"{key}: the arms were scored on different queries; rerun both arms")
    return paired_diff(a["mrr"].to_numpy(), b["mrr"].to_numpy(), resamples, seed)


def stats_params() -> tuple[int, int]:
    """The benchmark stage's bootstrap settings (params.yaml benchmark.*)."""
    bp = load_params(ROOT / "params.yaml").benchmark
    return bp.bootstrap_resamples, bp.seed


def delta_cell(d: dict | None) -> str:
    if d is None:
        return "–"
    p = d["p_value"]
    return f"{d['diff']:+.3f} [{d['diff_ci_low']:+.3f}, {d['diff_ci_high']:+.3f}] p={p:.3f}"


def query_sets(report: dict, mode: str) -> list[tuple[str, str]]:
    """(set key, row title) of the fine-tuned model's sets, in the benchmark report's order."""
    return [(k, f"held-out {LANG_NAMES.get(k.split('.')[1], k.split('.')[1])}" if k.startswith("heldout.")
             else k.replace("phentrieve.", "")) for k in report_sets(report, mode, "finetuned")]


def ci_cell(report: dict, key: str, metric: str) -> str:
    v = report.get(f"{key}.{metric}")
    if v is None:
        return "–"
    lo, hi = report.get(f"{key}.{metric}_ci_low"), report.get(f"{key}.{metric}_ci_high")
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{v:.3f}"


def full_table(study: Study) -> str:
    config, mode, found = study.config, study.mode, study.results()
    if not found:
        raise UserError(f"no arm results under {study.out}; run `python scripts/ablation.py run` first")
    first = next(iter(found.values()))["benchmark"]
    arms = list(found)
    cli = "python scripts/ablation.py" + ("" if config.get("name", "ablation") == "ablation" else f" --config configs/{config['name']}.yaml")
    lines = [f"Fine-tuned model, {mode}-vector retrieval, training: {config['steps']}; MRR and HR@1 with bootstrap 95% CIs; n = queries. Regenerate: "
             f"`{cli} run && {cli} table`.", ""]
    lines.append("| query set | metric | " + " | ".join(study.title(a) for a in arms) + " |")
    lines.append("|---|---|" + "---|" * len(arms))
    for key, title in query_sets(first, mode):
        n = first.get(f"{mode}.{key}.finetuned.n_queries", "")
        # MaxOntSim@5: how near (in the ontology) the top 5 come to the gold term, so an arm whose
        # misses move to relatives shows here even where MRR does not move
        for metric, name in (("mrr", "MRR"), ("hr@1", "HR@1"), ("maxontsim@5", "MaxOntSim@5")):
            cells = [ci_cell(found[a]["benchmark"], f"{mode}.{key}.finetuned", metric) for a in arms]
            lines.append(f"| {title} ({n}) | {name} | " + " | ".join(cells) + " |")
    base = config.get("baseline", arms[0])
    if base in found and len(arms) > 1:   # each arm's MRR minus the baseline's, paired per query
        resamples, seed = stats_params()
        rows_of = {a: study.per_query(a) for a in arms}
        for key, title in query_sets(first, mode):
            n = first.get(f"{mode}.{key}.finetuned.n_queries", "")
            cells = ["(baseline)" if a == base else
                     delta_cell(paired_mrr(rows_of[a], rows_of[base], mode, key, resamples, seed)) for a in arms]
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
        for key, title in query_sets(first, mode):
            cells = [delta_cell(vs_base(found[a]["benchmark"], mode, key)) for a in arms]
            lines.append(f"| {title} | Δ MRR vs untuned base | " + " | ".join(cells) + " |")
    lines += step_rows(study, found)
    lines += ["", "Where each arm's numbers come from:", *sources]
    return "\n".join(lines) + "\n"


def step_rows(study: Study, found: dict) -> list[str]:
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
                   " | ".join(delta_cell(paired_mrr(a, b, mode, k, resamples, seed)) for k in sets) + " |")
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


def plot_study(study: Study, path: Path) -> bool:
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


def readme_table(study: Study) -> str:
    """The README's table: one row per arm (``readme_arms``, default all; the others are
    counted below it, with a link), MRR / HR@1 per set (CIs: reports/<name>.md)."""
    config, mode = study.config, study.mode
    shown = config.get("readme_arms") or list(config["arms"])
    every = study.results()
    done = list(every)
    found = {arm: every[arm] for arm in shown if arm in every}
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
        cells.append("–" if arm == base else delta_cell(paired_mrr(study.per_query(arm), base_rows, mode, pooled, resamples, seed)))
        lines.append(f"| {study.title(arm)} | " + " | ".join(cells) + " |")
    elsewhere = [a for a in done if a not in shown]   # named in the full report: the README is a front page
    if elsewhere:
        arms = "1 more arm" if len(elsewhere) == 1 else f"{len(elsewhere)} more arms"
        lines += ["", f"Also measured: {arms}, in [reports/{study.out.name}.md](reports/{study.out.name}.md)."]
    missing = [study.title(a) for a in config["arms"] if a not in done]
    if missing:
        lines += ["", "Not run yet: " + "; ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def write_reports(study: Study, readme_path: Path = README) -> None:
    """reports/<name>.md (and its plot) and the study's README section (``readme_path``,
    default README.md, where it has the section's marks)."""
    text = full_table(study)
    report = study.out.with_suffix(".md")
    png = study.out.with_suffix(".png")
    if study.config.get("plot") and plot_study(study, png):
        text += f"\n![MRR against training pairs and minutes]({png.name})\n"
    # the reading of the numbers (where a curve flattens, what was not run) is written by a
    # person between these marks and kept when the tables are regenerated
    body = read_section(report.read_text(), "notes") if report.is_file() else None
    start, end = marks("notes")
    notes = "" if body is None else f"{start}\n{body}{end}\n\n"
    report.write_text(f"# {study.config.get('title', 'Hard-negative ablation')}\n\n" + notes + text)
    readme = readme_path.read_text()
    if marks(study.section)[0] in readme:
        readme_path.write_text(fill_section(readme, study.section, readme_table(study), str(readme_path)))
    print(text)
