# bertprep: `make demo` and `make test` work on a fresh clone with nothing installed but Python 3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The pinned torch takes the local CPU wheel here; a bare `torch` would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
DEMO := demo

.PHONY: install test demo clean-demo bench browser

install: $(VENV)/.installed

# Re-installs only when the package metadata or the C extension changes, so a second `make install` does nothing.
$(VENV)/.installed: setup.cfg setup.py pyproject.toml preprocess/_native.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,plot,cluster]'
	touch $@

test: install browser
	$(PY) -m pytest -q

# The report's browser test needs headless Chromium: installed here when missing, where apt-get
# and root are; elsewhere that test skips with the reason and the rest still runs.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  echo "installing chromium for the report's browser test (apt-get)" && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	echo "note: chromium not installed (needs apt-get and root); the browser test will skip"

demo: install
	$(PY) -m bertprep.demo --out $(DEMO)

clean-demo:
	rm -rf $(DEMO)
