# make test   create .venv/ when missing, install the pinned dependencies once, run the test suite
# make demo   segment a real brain T1 (skull-stripped and inside a head) and a breast and a cardiac phantom
# make bench  run the speed and memory benchmarks in benchmarks/

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Written after a successful install; reinstall only when the pins or the package metadata change.
STAMP := $(VENV)/.multitaskseg-installed
MODEL := MultiTaskSeg/Resources/Models/multitaskseg-3tasks.safetensors
DEMO_OUT := demo-output

.PHONY: test demo bench install

test: $(STAMP)
	$(PY) -m pytest Testing

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements-dev.txt pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: $(STAMP)
	@if [ ! -f "$(MODEL)" ]; then \
		echo "make demo: the shipped model $(MODEL) is missing: restore it from git, or train one (README, Training)."; \
		exit 1; \
	fi
	$(VENV)/bin/multitaskseg info
	$(VENV)/bin/multitaskseg demo $(DEMO_OUT)

bench: $(STAMP)
	$(PY) benchmarks/run_benchmarks.py
