# Two commands a new user needs:
#   make quickstart   install everything, then run sweeps/quickstart.yaml (≈ 5–10 min on 2 CPU cores)
#   make test         install everything, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: install data browser quickstart test bench bench-engine bench-search clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU torch first: an unpinned torch requirement would otherwise pull a multi-GB CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	# torchattacks declares torchvision and requests~=2.25; it imports only torch/numpy/scipy/tqdm.
	$(PY) -m pip install -q --no-deps "torchattacks==3.5.1"
	$(PY) -m pip install -q tqdm
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed data

# Real Fashion-MNIST from Debian where apt is usable; elsewhere advsweep downloads it (checksum-verified).
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

# Headless Chromium for the test that renders the HTML report, where apt is usable (without it that test skips).
browser:
	-@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

quickstart: install
	$(VENV)/bin/advsweep run sweeps/quickstart.yaml   # writes runs/quickstart-<time>/

test: install browser
	$(VENV)/bin/python -m pytest -q -ra -n 2 --dist loadfile --durations=25 tests

bench: install
	$(VENV)/bin/python benchmarks/attack_throughput.py

bench-engine: install   # engine vs plain loop at three job sizes (PGD-20, AutoAttack, Square); --device cuda on a GPU
	$(VENV)/bin/python benchmarks/engine_speed.py

bench-search: install   # ~30 min on 2 busy cores: grid, tpe and nsga2 sweeps, then a tabular replay
	$(VENV)/bin/python benchmarks/search_efficiency.py

clean:
	rm -rf runs .pytest_cache
