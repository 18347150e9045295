# The two set-up commands: `make demo` and `make test`. Both install into .venv first.
PY     ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-fast bench lock clean

install: $(VENV)/.installed

# The working set is pinned in constraints.txt (pyproject.toml keeps loose ranges for users).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	$(BIN)/sweeper launch sweeps/demo.yaml --fresh

# Two test files at a time (pytest-xdist; a file stays on one worker, so its module fixtures run
# once): the end-to-end tests mostly wait on Ray, trials and servers, so two overlap well on 2 cores.
test: install
	$(BIN)/python -m pytest -q -ra --durations=25 -n 2 --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/dbnet.py

lock: install
	(echo "# The working set used by 'make' (pip install -c constraints.txt). Regenerate: make lock"; \
	 $(BIN)/python -m pip freeze --exclude-editable | grep -v '^sweeper') > constraints.txt

clean:
	rm -rf runs mlruns.db optuna.db mlartifacts data/demo-shapes .pytest_cache
