# The README's commands. Every target sets up what it needs by itself: a
# local virtual environment (.venv) with this package installed, and
# ffmpeg for the targets that read audio through musdb.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PROFILE ?= paper
DEVICE ?= auto
# For make reproduce on a GPU: the CuPy wheel to add to .venv, e.g.
# CUPY=cupy-cuda12x or CUPY=cupy-cuda13x (see setup.cfg's extras); it is
# installed with its `ctk` extra (NVIDIA's wheels of NVRTC, the CUDA headers
# and cuBLAS), so a machine with only the NVIDIA driver computes.
CUPY   ?=
INSTALL_CUPY = @if [ -n "$(CUPY)" ]; then case "$(CUPY)" in *"["*) spec="$(CUPY)";; *) spec="$(CUPY)[ctk]>=14";; esac; \
	  echo "pip install $$spec"; $(PY) -m pip install --quiet "$$spec"; fi
NCA    := $(PY) -m nca_np
# make gpucheck checks the GPU unless DEVICE=cpu is given.
GPUCHECK_DEVICE := $(if $(filter auto,$(DEVICE)),gpu,$(DEVICE))

.PHONY: help setup ffmpeg test demo bench gradcheck gpucheck gpucompile reproduce clean

help:
	@echo "make demo       the main job on the built-in synthetic corpus (CPU, minutes)"
	@echo "make test       the whole test suite"
	@echo "make reproduce  the paper's protocol on MUSDB18 (set MUSDB_PATH; GPU when CuPy works, e.g. CUPY=cupy-cuda12x)"
	@echo "make bench      training step and NCA iteration against this machine's bound; training memory"
	@echo "                and speed from feature caches of two sizes (builds ~5 GB in a temp folder)"
	@echo "make gradcheck  every finite-difference gradient check, as a table"
	@echo "make gpucheck   the GPU against NumPy, as the protocol computes (DEVICE=cpu: the same on NumPy)"
	@echo "make gpucompile compile every CUDA kernel for sm_80 and sm_90 (needs CuPy, not a GPU)"

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,audio]'
	@touch $(STAMP)

ffmpeg:
	@bash scripts/ensure_ffmpeg.sh

test: $(STAMP) ffmpeg
	$(PY) -m pytest

demo: $(STAMP) ffmpeg
	$(NCA) reproduce --profile demo

reproduce: $(STAMP)
	@if [ -z "$$MUSDB_PATH" ]; then \
	  echo "make reproduce needs MUSDB18: download it (https://sigsep.github.io/datasets/musdb.html)," ; \
	  echo "then run: MUSDB_PATH=/path/to/musdb18 make reproduce   (MUSDB18-HQ: add --set data.is_wav=true via ARGS)." ; \
	  echo "make demo runs the whole job without it, on the built-in synthetic corpus." ; \
	  exit 2; fi
	@$(MAKE) --no-print-directory ffmpeg
	$(INSTALL_CUPY)
	$(NCA) reproduce --profile $(PROFILE) --device $(DEVICE) $(ARGS)

bench: $(STAMP)
	$(INSTALL_CUPY)
	$(PY) scripts/bench_train.py $(ARGS)
	$(PY) scripts/bench_nca.py $(ARGS)
	$(PY) scripts/bench_cache.py $(ARGS)

gradcheck: $(STAMP)
	$(PY) scripts/gradcheck.py

gpucheck: $(STAMP)
	$(INSTALL_CUPY)
	$(PY) scripts/gpucheck.py --device $(GPUCHECK_DEVICE) $(ARGS)

gpucompile: $(STAMP)
	$(INSTALL_CUPY)
	$(PY) scripts/gpucompile.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
