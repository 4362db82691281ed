# The two commands of the README: `make notebooks` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= auto
LAB_SETTINGS = $(VENV)/share/jupyter/lab/settings/overrides.d/clip-kit.json

.PHONY: setup setup-classroom test test-classroom test-fast notebooks reproduce rehearse benchmark student clean

setup: $(VENV)/.installed $(LAB_SETTINGS)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,classroom]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# JupyterLab's settings for the course: widget state saved in the notebook, so that a saved notebook reopened with a
# fresh kernel shows its explorers' controls (not "Error displaying widget"). In overrides.d, beside (not over) an
# overrides.json of your own; binder/postBuild installs the same file.
$(LAB_SETTINGS): jupyterlab-settings/clip-kit.json
	mkdir -p $(dir $@)
	cp $< $@

# Everything but the browser test (make test-classroom, minutes: it runs four notebooks in JupyterLab).
test: setup
	$(PY) -m pytest -q -m "not classroom"

# Debian's chromium for the browser test (Playwright drives it; it downloads no browser of its own). Needs root
# (or sudo); where it cannot be installed, the browser test skips and says so.
CHROMIUM := /usr/bin/chromium
setup-classroom: setup
	@test -x $(CHROMIUM) || { $(if $(filter 0,$(shell id -u)),,sudo -n) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo -n) apt-get install -y -q chromium; } || \
		echo "chromium could not be installed (apt-get as root): the browser test will skip"

# JupyterLab in headless chromium: the notebooks with explorers run, their controls moved, screenshots in
# outputs/screenshots/.
test-classroom: setup-classroom
	$(PY) -m pytest -q -m classroom

# Everything but the tests marked slow (notebook runs, reproduce, several processes, training runs).
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

notebooks: setup
	$(PY) tools/run_notebooks.py --profile $(PROFILE)

reproduce: setup
	$(PY) -m clip_helpers.replication.reproduce

# The online path without internet: quick at its real sizes, full's code path at CPU sizes, and reproduce, all on
# stand-ins (random ViT-B/32, procedural images) built once in rehearsal-data/. Outputs say REHEARSAL.
REHEARSAL_DATA := rehearsal-data
REHEARSAL_OUT := outputs/rehearsal
rehearse: setup
	$(PY) -m clip_helpers.replication.rehearsal --root $(REHEARSAL_DATA) --fresh
	$(PY) tools/run_notebooks.py --rehearsal --profile quick --data-dir $(REHEARSAL_DATA) --out $(REHEARSAL_OUT)/quick
	$(PY) tools/run_notebooks.py --rehearsal --profile full:train_per_class=1,val_per_class=1,test_per_class=30,num_epochs=1 \
		--data-dir $(REHEARSAL_DATA) --out $(REHEARSAL_OUT)/full --only 01 --only 04 --only 05 --only 07 --only 11
	$(PY) -m clip_helpers.replication.reproduce --rehearsal --data-dir $(REHEARSAL_DATA) --out-dir $(REHEARSAL_OUT) \
		--epochs 1 --train-size 64 --val-size 32

benchmark: setup
	$(PY) benchmarks/finetune_speed.py --out outputs/benchmark.json

# The student edition: solutions between ### BEGIN/END SOLUTION replaced by stubs, outputs cleared. A notebook there
# that differs from what it last wrote (a student's answers) stops it; FORCE=1 replaces it.
student: setup
	$(PY) tools/make_student.py --out outputs/student $(if $(FORCE),--force)

clean:
	rm -rf outputs .pytest_cache rehearsal-data
