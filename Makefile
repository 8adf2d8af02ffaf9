# Two commands do everything on a fresh clone:
#   make repro   - creates .venv if missing, installs, runs the whole pipeline (dvc repro)
#   make test    - creates .venv if missing, installs, runs the test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup repro test release ablation scaling params profile-gpu profile-embedded profile-release release-run clean-venv fetch-translations fetch-benchmarks \
	preflight gpu-estimate gpu-check quantize-select

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11 is required; set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0      # first; CPU build here, CUDA build on GPU boxes (docs/gpu.md)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip check
	touch $(STAMP)

setup: $(STAMP)
	@bash scripts/system-packages.sh

repro: setup
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "error: not a git repository (dvc needs one): run 'git init && git add -A && git commit -m init' first"; exit 1; }
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/dvc repro

test: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest

# release/<name>/: the folder phentrieve loads (docs/phentrieve.md); part of `dvc repro`,
# this target builds it and what it needs.
release: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/dvc repro release

params: $(STAMP)
	$(PY) -m hpo_embed.params

profile-gpu: $(STAMP)
	$(PY) -m hpo_embed.gpu.profile gpu

profile-embedded: $(STAMP)
	$(PY) -m hpo_embed.gpu.profile embedded

# The release model (profiles/release.yaml): the scaling study's best arm trained on every
# concept, benchmark concepts included (reported as seen / unseen); CPU, offline, <= 3 h.
profile-release: $(STAMP)
	$(PY) -m hpo_embed.gpu.profile release

# The release profile end to end as experiment $(RELEASE_EXP) through DVC's queue, then
# reports/release/ (params.yaml untouched; release-b128-2ep took 155 min on 2 cores; a killed
# run resumes when run again).
RELEASE_EXP ?= release
release-run: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) scripts/release_report.py --queue $(RELEASE_EXP)

# Checks of the active params in seconds (models resolve offline, CUDA for train.device:
# cuda, memory/time/disk estimate); `dvc repro` runs it first as the preflight stage.
preflight: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" eval "$$($(PY) scripts/stage_cmd.py preflight)"

# Re-measure the INT8 candidates already built in models/onnx on THIS machine and re-publish the
# fastest that passes the quality gate (docs/quantize.md).
quantize-select: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" eval "$$($(PY) scripts/stage_cmd.py quantize --select)"

# The gpu profile's memory / time / disk estimate (and the BAAI/bge-m3 table: GPU_ESTIMATE_ARGS=--table)
gpu-estimate: $(STAMP)
	$(PY) -m hpo_embed.gpu.estimate --profile gpu $(GPU_ESTIMATE_ARGS)

# A few training steps of the gpu profile on a random-weight shape twin of its model:
# peak memory, steps/s, tokens/s. Skips (with the reason) without a usable CUDA device.
# GPU_CHECK_ARGS=--tiny runs a scaled-down twin on CPU.
gpu-check: $(STAMP)
	$(PY) -m hpo_embed.gpu.check $(GPU_CHECK_ARGS)

# Official HPO translations (Babelon TSVs, pinned commit, sha256-checked) into the folder
# the translate stage reads by default (translate.official).
fetch-translations: $(STAMP)
	$(PY) -m stages.translate --fetch-pinned data/external/hpo-translations

# The phentrieve German benchmark files (pinned commit, sha256-checked) into the folder
# the benchmark stage reads by default (benchmark.external_sets).
fetch-benchmarks: $(STAMP)
	$(PY) -m stages.benchmark --fetch-phentrieve data/external/phentrieve-benchmarks/german

clean-venv:
	rm -rf $(VENV)

# The hard-negative ablation (configs/ablation.yaml): one `dvc exp run` per arm, one after
# the other (~15-25 min each on 2 cores), then reports/ablation.md and the README table.
# ABLATION_ARMS="mined iterative" runs some arms only.
ablation: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) scripts/ablation.py run $(ABLATION_ARMS)

# The scaling study (configs/scaling.yaml, issue 25): the arms go into DVC's queue (one worker,
# the workspace stays free; the all-pairs arm takes about an hour on 2 cores), then
# reports/scaling.md and reports/scaling.png. SCALING_ARMS="pairs_26k" runs some arms only.
# An arm whose worker was killed resumes from its last training checkpoint when queued again
# (the same command: checkpoints under models/checkpoints-queue/<fingerprint>, outside DVC's
# temporary copies). SCALING_MODE=run runs the arms in the workspace instead.
SCALING_MODE ?= queue
scaling: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) scripts/ablation.py --config configs/scaling.yaml $(SCALING_MODE) $(SCALING_ARMS)
