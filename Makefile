# The two commands of the README: `make notebooks` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= auto

.PHONY: setup test notebooks reproduce benchmark student clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

test: setup
	$(PY) -m pytest -q

notebooks: setup
	$(PY) tools/run_notebooks.py --profile $(PROFILE)

reproduce: setup
	$(PY) -m clip_helpers.reproduce

benchmark: setup
	$(PY) benchmarks/finetune_speed.py

# The student edition: solutions between ### BEGIN/END SOLUTION replaced by stubs, outputs cleared.
student: setup
	$(PY) tools/make_student.py --out outputs/student

clean:
	rm -rf outputs .pytest_cache
