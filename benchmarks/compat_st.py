"""Does the release folder load, and encode the same, under every sentence-transformers
version phentrieve allows (>= 4.1, < 6)? Not a test (it builds throw-away venvs).

    .venv/bin/python benchmarks/compat_st.py [--folder release/<name>]
        [--versions 4.1.0 5.0.0 5.4.1 5.7.0] [--isolated] [--work DIR]

For each version a venv in ``--work`` (default /tmp/hpo-embed-compat) gets exactly that
sentence-transformers. By default it shares this venv's other packages (torch 2.13.0,
transformers 4.57.6, ...: phentrieve's lock has the same transformers) through a .pth
file, and installs sentence-transformers (and Pillow, which 4.x and 5.0 import) there with
--no-deps, so the venv's own copy is the one imported; ``--isolated`` installs torch, transformers and sentence-transformers
from the registry into a venv of its own instead (slower, pip's own resolution).

In each venv a child process loads the folder as phentrieve does --
``SentenceTransformer(path)``, ``encode(texts)`` with no prompt argument -- and, where the
version has the ONNX backend, ``SentenceTransformer(path, backend="onnx")``. The texts
include one longer than the training length. Printed per version: whether it loads, its
``max_seq_length`` and default prompt, and the cosine of each embedding to this
interpreter's (the reference), min over the texts. Exit status 1 if a version fails to
load or agrees below 0.9999.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VERSIONS = ["4.1.0", "5.0.0", "5.4.1", "5.7.0"]
MIN_COSINE = 0.9999
TEXTS = ["Krampfanfall", "Zittern der Hände", "Fieber seit drei Tagen", "Seizure", "Convulsión febril",
         "Hypoplasie du corps calleux", "Abnormality of the cardiovascular system",
         "Der Patient zeigt seit der frühen Kindheit eine ausgeprägte muskuläre Hypotonie, eine verzögerte "
         "motorische Entwicklung mit freiem Laufen erst im Alter von drei Jahren, wiederholte fieberassoziierte "
         "Krampfanfälle sowie eine leichte Gesichtsdysmorphie mit breiter Nasenwurzel und tiefsitzenden Ohren."]

CHILD = r"""
import json, sys
import numpy as np
import sentence_transformers as st
from sentence_transformers import SentenceTransformer
folder, texts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
m = SentenceTransformer(folder, device="cpu")
emb = m.encode(texts, convert_to_numpy=True)
info = {"version": st.__version__, "max_seq_length": m.max_seq_length,
        "default_prompt": m.prompts.get(m.default_prompt_name) if m.default_prompt_name else None}
np.save(out + ".npy", emb)
try:
    o = SentenceTransformer(folder, device="cpu", backend="onnx")
    np.save(out + ".onnx.npy", o.encode(texts, convert_to_numpy=True))
    info["onnx"] = True
except Exception as exc:   # reported, not fatal: the ONNX backend is optional in every version
    info["onnx"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
print("INFO " + json.dumps(info))
"""


def default_folder() -> Path:
    found = sorted(p for p in (ROOT / "release").glob("*") if p.is_dir())
    if len(found) != 1:
        sys.exit(f"error: release/ holds {len(found)} folders; name one with --folder (make release builds it)")
    return found[0]


def make_venv(path: Path, version: str, isolated: bool) -> Path:
    py = path / "bin" / "python"
    if not py.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    if isolated:
        pkgs = ["torch==2.13.0", "transformers==4.57.6", f"sentence-transformers=={version}"]
        subprocess.run([str(py), "-m", "pip", "install", "-q", *pkgs], check=True)
    else:
        (site / "_hpo_embed_shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        # --no-deps: pip must never touch the shared venv; Pillow is the one dependency of
        # 4.x / 5.0 that this project does not install
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", f"sentence-transformers=={version}",
                        "Pillow"], check=True)
    return py


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=None)
    ap.add_argument("--versions", nargs="+", default=VERSIONS)
    ap.add_argument("--isolated", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hpo-embed-compat"))
    a = ap.parse_args()
    folder = (a.folder or default_folder()).resolve()
    from sentence_transformers import __version__

    from hpo_embed.models.loader import load_sentence_transformer   # plain SentenceTransformer(path), fewer warnings

    ref_model = load_sentence_transformer(folder, str(folder), device="cpu")
    ref = ref_model.encode(TEXTS, convert_to_numpy=True)
    ref_onnx = load_sentence_transformer(folder, str(folder), device="cpu", backend="onnx").encode(TEXTS, convert_to_numpy=True)
    n_tokens = len(ref_model.tokenizer(TEXTS[-1])["input_ids"])
    print(f"folder {folder}\nreference: sentence-transformers {__version__} in {sys.prefix}; "
          f"{len(TEXTS)} texts, the longest {n_tokens} tokens; venvs: "
          f"{'isolated installs' if a.isolated else 'sentence-transformers only, other packages shared'}\n")
    print("| sentence-transformers | loads | max_seq_length | default prompt | cosine min (PyTorch) | "
          "cosine min (backend=onnx) |\n|---|---|---|---|---|---|")
    failed = False
    for v in a.versions:
        try:
            py = make_venv(a.work / f"st-{v}{'-iso' if a.isolated else ''}", v, a.isolated)
        except subprocess.CalledProcessError as exc:
            print(f"| {v} | install failed ({exc}) | | | | |")
            failed = True
            continue
        out = a.work / f"emb-{v}"
        res = subprocess.run([str(py), "-c", CHILD, str(folder), json.dumps(TEXTS), str(out)],
                             capture_output=True, text=True)
        line = next((x for x in res.stdout.splitlines() if x.startswith("INFO ")), None)
        if res.returncode or line is None:
            err = (res.stderr.strip().splitlines() or ["?"])[-1][:150]
            print(f"| {v} | **no**: {err} | | | | |")
            failed = True
            continue
        info = json.loads(line[5:])
        cos = float(cosines(np.load(f"{out}.npy"), ref).min())
        onnx = f"{float(cosines(np.load(f'{out}.onnx.npy'), ref_onnx).min()):.6f}" if info["onnx"] is True \
            else f"not loaded ({info['onnx']})"
        failed |= cos < MIN_COSINE or info["version"] != v
        print(f"| {info['version']} | yes | {info['max_seq_length']} | {info['default_prompt']!r} | {cos:.6f} | {onnx} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
