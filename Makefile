# make demo : create .venv, install gandissect, run the main job on the built-in default (runs/demo/)
# make test : create .venv with the dev extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/python -m pip
PIP_FLAGS = --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test lint bench clean browser

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install $(PIP_FLAGS) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/gandissect demo --config experiments/scenes/demo.yaml

# the browser tests drive Debian's chromium through its chromedriver: installed with apt-get where we are root,
# else those tests are skipped with a note (sudo apt-get install chromium chromium-driver)
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "note: no /usr/bin/chromium; the browser tests will be skipped (apt-get install chromium chromium-driver)"; fi

test: $(VENV)/.installed-dev browser
	$(VENV)/bin/python -m pytest

lint: $(VENV)/.installed-dev
	$(VENV)/bin/flake8 src tests bench

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/segmenter_speed.py
	$(VENV)/bin/python bench/train_speed.py
	$(VENV)/bin/python bench/fid_speed.py
	$(VENV)/bin/python bench/dissect_speed.py
	$(VENV)/bin/python bench/artifact_maps.py
	$(VENV)/bin/python bench/paint_load.py
	$(VENV)/bin/python bench/paint_effects.py
	$(PIP) install $(PIP_FLAGS) -e '.[hf]'
	$(VENV)/bin/python bench/paper_scale.py

clean:
	rm -rf $(VENV) runs
