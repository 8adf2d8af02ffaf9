"""reports/release/ from a finished run of the release profile (issue 25).

    python scripts/release_report.py --queue <name>    # make release-run: run it, then copy it
    python scripts/release_report.py <name>            # copy a run that already finished

``--queue`` runs the whole pipeline on profiles/release.yaml's keys, given to `dvc exp run` as
``-S`` settings on the committed params.yaml (params.yaml is not switched and switched back),
through DVC's queue (hpo_embed.experiments.queue: one worker, the workspace stays free, a
killed run resumes from its last training checkpoint when queued again under the same name).
The same run by hand: ``make profile-release && dvc exp run -n <name>``, then
``make profile-embedded``.

Copies the run's stage outputs verbatim from the experiment's commit (git-tracked reports, the
model card from the DVC cache; the workspace is not touched, so it works while other runs go
on) and writes the headline block of reports/release/README.md from those same files, between
``<!-- release:start -->`` and ``<!-- release:end -->``; the prose around it stays as written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # hpo_embed when run as a script
from hpo_embed import experiments  # noqa: E402
from hpo_embed.common import UserError  # noqa: E402
from hpo_embed.experiments import exp_rev, read_at  # noqa: E402
from hpo_embed.gpu.profile import load_profile, overlay_settings  # noqa: E402
from hpo_embed.markdown import fill_section, marks  # noqa: E402

OUT = ROOT / "reports" / "release"
SECTION = "release"   # reports/release/README.md's generated block
# the experiment's file -> its name under reports/release/
COPIED = {
    "params.yaml": "params.yaml",
    "reports/benchmark.md": "benchmark.md",
    "metrics/benchmark.json": "benchmark.metrics.json",
    "metrics/pairs.json": "pairs.metrics.json",
    "metrics/train.json": "train.metrics.json",
    "reports/train.json": "train.report.json",
    "metrics/quantize.json": "quantize.metrics.json",
    "reports/quantize.md": "quantize.md",
}
SETS = (("heldout.all", "held-out, all languages"), ("heldout.de", "held-out, German"),
        ("phentrieve.70cases_gemini_v1", "70cases_gemini_v1"), ("phentrieve.70cases_o3_v1", "70cases_o3_v1"))


def run_release(name: str, poll_s: float = 60.0) -> None:
    """The release profile's whole pipeline as experiment ``name``, through DVC's queue."""
    states = experiments.queue({name: (overlay_settings(load_profile("release")), None)}, ROOT, poll_s)
    if states.get(name) != "Success":
        raise UserError(f"experiment {name}: {states.get(name, 'not in the queue')} "
                        f"(`dvc queue logs {name}` says why; queue it again to resume its training)")


def collect(name: str, read) -> dict[str, bytes]:
    """The files reports/release/ holds, keyed by their names there; ``read(path)`` reads the
    experiment's file. The model card is release/<name>/README.md, <name> from metrics/release.json."""
    files = {}
    for path, dest in COPIED.items():
        data = read(path)
        if data is None:
            raise UserError(f"experiment {name} has no {path}: did it run the whole pipeline?")
        files[dest] = data
    release = read("metrics/release.json")
    card = read(f"release/{json.loads(release)['name']}/README.md") if release else None
    if card is None:
        raise UserError(f"experiment {name} has no release folder: did it run the release stage?")
    files["model_card.md"] = card
    files["benchmark.report.json"] = read("reports/benchmark.json")
    return files


def headline(name: str, rev: str, files: dict[str, bytes]) -> str:
    """The README block: what ran and what it scored (multi-vector), from the copied files."""
    p = yaml.safe_load(files["params.yaml"])
    tr = json.loads(files["train.report.json"])
    tm = json.loads(files["train.metrics.json"])
    q = json.loads(files["quantize.metrics.json"])
    b = json.loads(files["benchmark.report.json"])
    seen = json.loads(files["benchmark.metrics.json"])
    t = p["train"]
    epochs = tr.get("epochs", 1.0)
    lines = [
        f"Experiment `{name}` (commit {rev[:7]}): {t['loss']}, batch {t['batch_size']}, lr {p['lr']:g}, "
        f"{tr['pairs']:,} pairs × {epochs:g} epoch{'s' if epochs != 1 else ''} ({tr['steps']:,} steps), `pairs.holdout_sets: {json.dumps(p['pairs']['holdout_sets'])}`; "
        f"training {tm['train_time_s']:,.0f} s ({tm['pairs_per_s']} pairs/s, {tm['precision']}), "
        f"dev MRR {tm['dev_mrr_base']:.3f} → {tm['dev_mrr_best']:.3f} (best step {tm['best_step']}).",
        "",
        "| query set (multi-vector) | n | untuned base MRR | fine-tuned MRR (95% CI) | Δ (95% CI) | p | cases trained on |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in SETS:
        k = f"multi.{key}"
        if f"{k}.finetuned.mrr" not in b:
            continue
        n = b[f"{k}.finetuned.n_queries"]
        trained = seen.get(f"{key}.n_cases_in_train")
        ci = f"{b[f'{k}.finetuned.mrr_ci_low']:.3f}–{b[f'{k}.finetuned.mrr_ci_high']:.3f}"
        d = f"{k}.finetuned_vs_base.mrr_diff"
        delta = f"{b[d]:+.3f} ({b[d + '_ci_low']:+.3f} to {b[d + '_ci_high']:+.3f})"
        lines.append(f"| {label} | {n:,} | {b[f'{k}.base.mrr']:.3f} | {b[f'{k}.finetuned.mrr']:.3f} ({ci}) "
                     f"| {delta} | {b[f'{k}.finetuned_vs_base.p_value']:.3f} "
                     f"| {'none (held out)' if trained is None else f'{trained} of {n}'} |")
    lines += ["", f"INT8: `{q['chosen']}`, {q['speed_ratio_b32']}× PyTorch fp32 at batch 32, gate passed: "
                  f"{q['gate_passed']}; held-out MRR Δ {q['mrr_delta']:+.4f}, HR@1 Δ {q['hr1_delta']:+.4f}."]
    return "\n".join(lines)


def write(name: str, rev: str, files: dict[str, bytes], out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for dest, data in files.items():
        if dest != "benchmark.report.json":   # 2k keys: the block and benchmark.md carry what matters
            (out / dest).write_bytes(data)
    readme = out / "README.md"
    text = readme.read_text() if readme.is_file() else "# The release profile\n\n" + "\n".join(marks(SECTION)) + "\n"
    readme.write_text(fill_section(text, SECTION, headline(name, rev, files), str(readme)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", help="the release run's `dvc exp` name")
    ap.add_argument("--queue", action="store_true",
                    help="first run profiles/release.yaml end to end under that name through DVC's queue")
    a = ap.parse_args(argv)
    try:
        if a.queue:
            run_release(a.experiment)
        rev = exp_rev(a.experiment, ROOT)
        files = collect(a.experiment, lambda path: read_at(rev, path, ROOT))
        write(a.experiment, rev, files)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(f"{OUT.relative_to(ROOT)}: {len(files) - 1} files from {a.experiment} ({rev[:7]})")


if __name__ == "__main__":
    main()
