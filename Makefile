# The README's two commands: `make reproduce` (the main job) and `make test` (the tests); `make
# docs` builds the documentation site.
# Both create the virtual environment in $(VENV) and install the package into it first.
# `make reproduce` reruns the paper's MNIST experiments: on the files in $NAMSG_DATA_DIR if it
# is set, else (quick form) on the embedded 5,000-image sample; ARGS passes more flags. The runs
# go to runs/mnist (runs/mnist-sample), beside the committed reference in logs/mnist.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install reproduce demo test docs clean

install: $(VENV)/.installed

# The pinned versions that made the committed logs (MXNet 1.9.1 CPU among them), with the package
# and its extras; the package alone installs no MXNet (README, Installation).
$(VENV)/.installed: setup.py requirements-reproduce.txt requirements-docs.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-reproduce.txt -r requirements-docs.txt \
		-e '.[experiments,test,docs]'
	touch $@

reproduce: install
	$(PY) scripts/reproduce_mnist.py $(ARGS)

demo: install
	$(PY) scripts/demo.py

# -rs: the reason of every skipped test is printed.
test: install
	$(PY) -m pytest -q -rs tests

# The documentation site, as CI checks it: warnings are errors and every cross-reference must
# resolve. Open docs/_build/html/index.html.
docs: install
	$(PY) -m sphinx -W -n --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

clean:
	rm -rf $(VENV) build *.egg-info docs/_build
