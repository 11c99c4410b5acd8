# make demo : create .venv, install gandissect, run the main job on the built-in default (runs/demo/)
# make test : create .venv with the dev extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/python -m pip
PIP_FLAGS = --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install $(PIP_FLAGS) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/gandissect demo --config experiments/scenes/demo.yaml

test: $(VENV)/.installed-dev
	$(VENV)/bin/python -m pytest

lint: $(VENV)/.installed-dev
	$(VENV)/bin/flake8 src tests bench

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/segmenter_speed.py
	$(VENV)/bin/python bench/train_speed.py
	$(VENV)/bin/python bench/fid_speed.py
	$(VENV)/bin/python bench/dissect_speed.py
	$(VENV)/bin/python bench/artifact_maps.py

clean:
	rm -rf $(VENV) runs
