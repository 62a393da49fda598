# make test   create .venv/ when missing, install the pinned dependencies once, run the test suite
# make demo   segment a brain MRI with the shipped model (needs the trained model of the training issue)
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
		echo "make demo: the shipped model $(MODEL) is not there yet (it comes with the training issue)."; \
		exit 1; \
	fi
	mkdir -p $(DEMO_OUT)
	$(VENV)/bin/multitaskseg info
	$(VENV)/bin/multitaskseg segment "$$($(PY) -c 'from MultiTaskSegLib.brain_data import mni152_t1_path; print(mni152_t1_path())')" \
		-o $(DEMO_OUT)/mni152.seg.nrrd --overwrite

bench: $(STAMP)
	@for script in benchmarks/*.py; do \
		echo "== $$script"; \
		$(PY) "$$script" || exit 1; \
	done
