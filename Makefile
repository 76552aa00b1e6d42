# The README's two commands: `make demo` (set up, train on the offline demo data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CI's pins: pip takes these two from local disk. The package itself only asks for torch>=2.4.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test mutants clean

$(BIN)/vitdist: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS) -e '.[dev,deepspeed]'
	@touch $@

setup: $(BIN)/vitdist

demo: setup
	$(BIN)/vitdist train --preset demo --overwrite

test: setup
	$(BIN)/ruff check vitdist tests bench
	$(BIN)/python -m pytest -q --durations=20

# Plant known bugs in a temporary copy and check the tests catch each (tests/README.md); not part of `test`.
mutants: setup
	$(BIN)/python tests/mutants.py

clean:
	rm -rf $(VENV) runs .pytest_cache
