# bertprep: `make demo` and `make test` work on a fresh clone with nothing installed but Python 3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The pinned torch takes the local CPU wheel here; a bare `torch` would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
DEMO := demo

.PHONY: install test demo clean-demo bench

install: $(VENV)/.installed

# Re-installs only when the package metadata or the C extension changes, so a second `make install` does nothing.
$(VENV)/.installed: setup.cfg setup.py pyproject.toml preprocess/_native.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m bertprep.demo --out $(DEMO)

clean-demo:
	rm -rf $(DEMO)
