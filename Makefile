# One entry point for everything. `make reproduce` and `make test` build the environment
# themselves when it is missing; a second call reinstalls nothing (stamp file).
SHELL    := /bin/bash
PROFILE  ?= cpu
VENV     := .venv
PY       := $(VENV)/bin/python
KERNEL   := kl-study
STAMP    := $(VENV)/.installed-stamp
PROFILES := $(basename $(notdir $(wildcard profiles/*.yaml)))
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: env reproduce figures collect plan test test-avx2 unit nbval lab bench controls clean-env check-profile help

help:
	@echo "make reproduce [PROFILE=$(PROFILES)]   recompute every run from scratch, redraw, compare with the committed records (cpu: ~35 min)"
	@echo "make figures [PROFILE=...]             redraw every figure, table and report from the committed records (no training)"
	@echo "make collect FROM=DIR [PROFILE=...]    copy the run records another checkout made (a worktree running a grid), then redraw"
	@echo "make plan [PROFILE=...]                every run of the profile's grids: run id, steps, record, estimated time (no training)"
	@echo "make test                               unit tests + notebooks under nbval (smoke profile)"
	@echo "make test-avx2                          the same on the AVX2-only path (no AVX-512, no native bf16), from any x86-64 host"
	@echo "make lab                                JupyterLab on notebooks/ with the project kernel"
	@echo "make bench                              speed benchmarks (ratios measured side by side, ~25 min)"
	@echo "make controls                           the control grids of cpu-full that notebook 06 reads (~3 h)"

env: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (kl-study)" >/dev/null
	@touch $(STAMP)

check-profile:
	@if [ ! -f profiles/$(PROFILE).yaml ]; then \
	  echo "error: unknown profile '$(PROFILE)'; valid profiles: $(PROFILES)" >&2; exit 2; fi

# reproduce: every run trained from scratch in results/$(PROFILE)/reproduction/, every notebook run on
# the new records, then compared with the committed ones (results/$(PROFILE)/REPRODUCTION.md).
# PUBLISH=1 replaces the committed results (PUBLISH_DIRTY=1: even from uncommitted code); FRESH=1
# starts over instead of resuming an interrupted reproduction.
reproduce: check-profile $(STAMP)
	$(PY) -m kl_utils reproduce --profile $(PROFILE) $(if $(PUBLISH),--publish) $(if $(PUBLISH_DIRTY),--allow-dirty) $(if $(FRESH),--fresh)

# figures: every figure, table, claims.csv and REPORT.md redrawn from the committed records; trains nothing.
figures: check-profile $(STAMP)
	$(PY) -m kl_utils figures --profile $(PROFILE)

# collect: the records a grid made in another checkout (e.g. a git worktree at a clean commit), copied
# in (never overwriting), then `figures` and everything else they feed (other pairs' claims, README).
collect: check-profile $(STAMP)
	@test -n "$(FROM)" || { echo "error: give the other checkout: make collect FROM=path/to/checkout PROFILE=$(PROFILE)" >&2; exit 2; }
	$(PY) -m kl_utils collect --from $(FROM) --profile $(PROFILE)

# plan: what reproduce would train, run by run, without training anything.
plan: check-profile $(STAMP)
	$(PY) -m kl_utils plan --profile $(PROFILE)

unit: $(STAMP)
	$(PY) -m pytest -q tests

nbval: $(STAMP)
	KL_PROFILE=smoke TQDM_DISABLE=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 \
	  $(PY) -m pytest -q --nbval-lax --nbval-kernel-name $(KERNEL) -p no:cacheprovider $(NOTEBOOKS)

test: $(STAMP)
	@start=$$(date +%s); $(MAKE) --no-print-directory unit && $(MAKE) --no-print-directory nbval; \
	rc=$$?; echo "make test finished in $$(( $$(date +%s) - start )) s"; exit $$rc

# The AVX2-only path from any x86-64 host (an AMD Zen 3's kernels: torch's, oneDNN's and MKL's; no native bf16;
# kl_utils.core.precision.AVX2_ENV): what a CI host or a laptop without AVX-512 runs.
AVX2_ENV := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
test-avx2: $(STAMP)
	@$(AVX2_ENV) $(PY) -c "import torch; from kl_utils.core import precision as p; print('AVX2 path:', torch.backends.cpu.get_cpu_capability(), '| native bf16:', p.cpu_native_bf16())"
	@$(AVX2_ENV) $(MAKE) --no-print-directory test

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --MappingKernelManager.default_kernel_name=$(KERNEL)

# Every speed figure, end to end and the SmolLM2 ones included (~25 min; BENCH_ARGS= for the miniature's ratios alone).
BENCH_ARGS ?= --end-to-end --llm
bench: $(STAMP)
	TQDM_DISABLE=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 $(PY) -m kl_utils bench $(BENCH_ARGS)

# The controls notebook 06 reads (cpu: from cpu-full); then `make reproduce` redraws them.
controls: $(STAMP)
	@set -e; for grid in $$($(PY) -c 'from kl_utils.config.arms import CONTROL_GRIDS; print(*CONTROL_GRIDS)'); do \
	  echo "== cpu-full grid $$grid"; $(PY) -m kl_utils run --profile cpu-full --grid $$grid; done

clean-env:
	rm -rf $(VENV)

# GPU check of the paper profile: a few hundred CPT updates of its model and settings on random
# tokens; prints tokens/s, model FLOPs utilization and peak memory (GPU_CHECK_ARGS: e.g. --steps 300).
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(PY) -m kl_utils gpu-check --profile $(if $(filter cpu,$(PROFILE)),paper,$(PROFILE)) $(GPU_CHECK_ARGS)
