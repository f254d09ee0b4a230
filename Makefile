# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install sainet with [dali,dev,bench]; the install is
# skipped while pyproject.toml is unchanged (a stamp file records what was installed).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sainet-installed
# torch/torchvision are pinned to the builds that install from local files on the project's machines.
TORCH  := torch==2.14.1 torchvision==0.29.1
DEMO   ?= demo
export YOLO_OFFLINE := 1

.PHONY: venv demo test test-slow lint clean

venv: $(STAMP)

# The install says what it is doing: a step line each, and pip's own progress for the big download.
$(STAMP): pyproject.toml
	@echo "==> [1/3] creating $(VENV) (once)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/3] upgrading pip"
	@$(BIN)/python -m pip install -q --upgrade pip
	@echo "==> [3/3] installing sainet[dali,dev,bench] with $(TORCH) (2-3 min on a fresh machine; progress below)"
	$(BIN)/python -m pip install --progress-bar on $(TORCH) -e '.[dali,dev,bench]'
	@touch $(STAMP)
	@echo "==> installed: $$($(BIN)/sainet --version)"

demo: $(STAMP)   # <= 3 min on 2 cores after the install: packs into /dev/shm, trains until mAP50 is well above 0
	$(BIN)/sainet demo --out $(DEMO)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

lint: $(STAMP)
	$(BIN)/ruff check sainet loaders cache_tools tests benchmarks .ci
	$(BIN)/python .ci/funclen.py sainet loaders cache_tools benchmarks configs   # no function over 60 lines
	$(BIN)/lint-imports   # the layers contract in .importlinter: app -> loaders -> cache_tools -> sainet.core, no circles

clean:
	rm -rf $(DEMO) runs .cache/bench .pytest_cache .ruff_cache
	rm -rf /dev/shm/sainet-demo-$$(id -u)
