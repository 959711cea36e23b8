# Two commands matter: `make demo` and `make test`. Each builds .venv by itself first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m meshnat demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_codec
	$(BIN)/python -m benchmarks.bench_reflection
	$(BIN)/python -m benchmarks.bench_discovery
	$(BIN)/python -m benchmarks.bench_relay_throughput
	$(BIN)/python -m benchmarks.bench_tunnel
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/python -m benchmarks.bench_classify_lab && \
	$(BIN)/python -m benchmarks.bench_punch_lab; \
	else echo "lab benchmarks skipped: they need root for the NAT lab"; fi

fuzz: $(STAMP)
	$(BIN)/python -m benchmarks.fuzz_decoders --inputs 1000000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
