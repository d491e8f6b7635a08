# Set-up and the project's jobs. `make reproduce` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The library needs torch>=2.2; development and CI pin the CPU build (an unpinned torch pulls CUDA).
TORCH_PIN ?= torch==2.13.0
OUT ?= runs/game-mnist
SEEDS ?= 3
# Runs at once; the bundled configurations pin one CPU thread each, so the results do not depend on it.
JOBS ?= 2
BENCH_RESULTS ?= runs/bench/results.jsonl

.PHONY: setup reproduce test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

reproduce: setup
	$(BIN)/equiprune reproduce game-mnist --out $(OUT) --seeds $(SEEDS) --jobs $(JOBS)

test: setup lint
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/lint-imports

# Every benchmark appends its figures (and the machine it ran on) to one JSON-lines file.
bench: setup
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python benchmarks/step_overhead.py --results $(BENCH_RESULTS)
	$(BIN)/python benchmarks/slq_vs_pyhessian.py --results $(BENCH_RESULTS)
	$(BIN)/python benchmarks/pruning_limit.py --results $(BENCH_RESULTS)
	$(BIN)/python benchmarks/compaction_speed.py --results $(BENCH_RESULTS)
	$(BIN)/python benchmarks/conv_width_rate.py --layers --results $(BENCH_RESULTS)
	$(BIN)/python benchmarks/cnn_filters_fashion.py --results $(BENCH_RESULTS)
	$(BIN)/python benchmarks/reparam_step.py --results $(BENCH_RESULTS)
	$(BIN)/python benchmarks/lottery_cost.py --results $(BENCH_RESULTS)
	$(BIN)/python benchmarks/ddp_scaling.py --results $(BENCH_RESULTS)
	$(BIN)/python benchmarks/minilm_distill.py --results $(BENCH_RESULTS)
	@echo "results appended to $(BENCH_RESULTS)"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
