# make demo   set up .venv and train the adding problem on a local Ray (CPU, SQLite MLflow)
# make test   set up .venv and run the whole test suite (unit + integration)
# make lint   ruff over the code and tests
# make bench  run the benchmarks (all, hours on 2 cores; ONLY="overhead cells" for some)
#             and write benchmarks/RESULTS.md
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test unit lint bench clean

$(BIN)/rnn-orch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/rnn-orch
	$(BIN)/rnn-orch train configs/adding.yaml

test: $(BIN)/rnn-orch
	$(BIN)/python -m pytest

unit: $(BIN)/rnn-orch
	$(BIN)/python -m pytest -m "not integration"

lint: $(BIN)/rnn-orch
	$(BIN)/ruff check .

bench: $(BIN)/rnn-orch
	$(BIN)/python benchmarks/run.py $(ONLY)

clean:
	rm -rf $(VENV) mlflow.db mlruns runs ray_results *.egg-info
