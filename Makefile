# bertprep: `make demo` and `make test` work on a fresh clone with nothing installed but Python 3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The pinned torch takes the local CPU wheel here; a bare `torch` would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
# On a CUDA machine the torch to use is the one already there (the system python's, as in an NGC
# image, or a venv's): when $(PYTHON) imports a torch built with CUDA, the venv sees $(PYTHON)'s
# site-packages (--system-site-packages; and a .pth file when $(PYTHON) is itself a venv, whose
# packages --system-site-packages cannot reach) and the CPU wheel is not installed over it.
# SYSTEM_TORCH=yes/no forces either way.
SYSTEM_TORCH ?= auto
HAS_CUDA_TORCH := import sys, torch; sys.exit(0 if torch.version.cuda else 1)
SITE_DIRS := import site; print(chr(10).join(site.getsitepackages()))
PURELIB := import sysconfig; print(sysconfig.get_paths()["purelib"])
DEMO := demo
GPU_CHECK_ARGS ?=

.PHONY: install test demo clean-demo bench browser gpu-check

install: $(VENV)/.installed

# Re-installs only when the package metadata or a C extension changes, so a second `make install` does nothing.
$(VENV)/.installed: setup.cfg setup.py pyproject.toml preprocess/_native.c shards/_gather.c trainer/_loader.c
	@if [ "$(SYSTEM_TORCH)" = yes ] || { [ "$(SYSTEM_TORCH)" = auto ] && $(PYTHON) -c '$(HAS_CUDA_TORCH)' 2>/dev/null; }; then \
	  echo "keeping $(PYTHON)'s torch: $$($(PYTHON) -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null)"; \
	  echo "$(PYTHON) -m venv --system-site-packages $(VENV)"; \
	  $(PYTHON) -m venv --system-site-packages $(VENV) && \
	  { [ "$(SYSTEM_TORCH)" = yes ] || $(PY) -c '$(HAS_CUDA_TORCH)' 2>/dev/null || \
	    { echo "$(PYTHON) is a venv: its site-packages go on the path through bertprep-system-torch.pth"; \
	      $(PYTHON) -c '$(SITE_DIRS)' > "$$($(PY) -c '$(PURELIB)')/bertprep-system-torch.pth"; }; }; \
	else \
	  echo "$(PYTHON) -m venv $(VENV); $(PY) -m pip install -q $(TORCH)"; \
	  $(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q $(TORCH); \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,plot,cluster]'
	touch $@

# Two workers (pytest-xdist): the suite is mostly one-threaded Python, and CI has 2 cores.
test: install browser
	$(PY) -m pytest -q -n 2 --dist loadgroup

# The report's browser test needs headless Chromium: installed here when missing, where apt-get
# and root are; elsewhere that test skips with the reason and the rest still runs.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  echo "installing chromium for the report's browser test (apt-get)" && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	echo "note: chromium not installed (needs apt-get and root); the browser test will skip"

# GPU acceptance (docs/gpu.md): every CUDA path checked and measured in under 8 minutes, written to
# gpu-check/. `make gpu-check GPU_CHECK_ARGS=--dry-run` runs the same stages on CPU with tiny shapes.
gpu-check: install
	$(PY) -m bench.gpu $(GPU_CHECK_ARGS)

demo: install
	$(PY) -m bertprep.demo --out $(DEMO)

clean-demo:
	rm -rf $(DEMO)
