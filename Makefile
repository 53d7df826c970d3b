# Two commands set everything up on a fresh machine:
#   make demo   - installs onnxstitch (CPU builds) and runs the Keras + PyTorch hybrid demo
#   make test   - installs onnxstitch with its test tools and runs the test suite
PYTHON ?= python3
PIP = $(PYTHON) -m pip
STAMP = .install.stamp

.PHONY: install demo test lint bench deploy-env

# torch==2.13.0 first, the CPU build: a bare "torch" requirement would resolve a multi-GB CUDA build.
# Where pip's indexes only offer the CUDA build, name the CPU index:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
$(STAMP): setup.cfg pyproject.toml constraints-dev.txt
	$(PIP) install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e '.[dev]' -c constraints-dev.txt
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PYTHON) -m onnxstitch demo --out demo-out

test: install
	$(PYTHON) -m pytest -q

lint: install
	$(PYTHON) -m ruff check onnxstitch tests scripts
	$(PYTHON) -m ruff format --check onnxstitch tests scripts
	$(PYTHON) -m mypy

# every benchmark in turn, each writing its section of docs/benchmarks.md (~20 min on 2 cores)
bench: install
	for b in runtime optimize merge serve convert quantize; do $(PYTHON) scripts/bench/bench_$$b.py || exit 1; done

# a separate virtualenv with the real Triton server (PyTriton, numpy<2) and the KServe SDK, used by
# tests/deploy/test_real_servers.py (skipped when missing, required in CI)
deploy-env: .venv-deploy/bin/python

.venv-deploy/bin/python:
	$(PYTHON) -m venv .venv-deploy
	.venv-deploy/bin/python -m pip install -q nvidia-pytriton==0.7.0 'numpy<2' onnxruntime kserve==0.21.0 pyyaml
