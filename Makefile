# Two commands for a fresh clone (see README): `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := demo-output

.PHONY: setup demo test test-fast lint clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_env.sh scripts/fix_torchvision_cpu.py
	bash scripts/setup_env.sh

demo: $(STAMP)
	$(PY) -m mfhq demo --workdir $(DEMO)

test: $(STAMP)
	$(PY) -m pytest

# The inner loop: everything but the end-to-end builds, Ray clusters and training runs
# (tests marked slow, see tests/conftest.py), in a few minutes on 2 cores.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check curation training mfhq mfhq_contract mfhq_faces tests bench scripts

clean-demo:
	rm -rf $(DEMO)
