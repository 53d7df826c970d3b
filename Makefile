# Two commands set everything up on a fresh machine:
#   make demo   - installs onnxstitch (CPU builds) and runs the Keras + PyTorch hybrid demo
#   make test   - installs onnxstitch with its test tools and runs the test suite
PYTHON ?= python3
PIP = $(PYTHON) -m pip
STAMP = .install.stamp

.PHONY: install demo test lint bench

# torch==2.13.0 first: a bare "torch" requirement would resolve a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PYTHON) -m onnxstitch demo --out demo-out

test: install
	$(PYTHON) -m pytest -q

lint: install
	$(PYTHON) -m ruff check onnxstitch tests scripts
	$(PYTHON) -m ruff format --check onnxstitch tests scripts

bench: install
	$(PYTHON) scripts/bench/run_all.py
