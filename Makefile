# The README's two commands: `make demo` and `make test`. Both bootstrap .venv on a fresh machine.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
DEMO   ?= demo_out
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PYTHONUNBUFFERED := 1

.PHONY: demo test install browser bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e ".[test,notebooks]"
	touch $(STAMP)

install: $(STAMP)

# The test extras on top: the review web app (Flask, selenium) and the scale-out engines (Ray).
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,notebooks,web,distributed]"
	touch $(TEST_STAMP)

# A headless browser for the review app's browser test, where one can be had (Debian's chromium as
# root); the test skips with the reason otherwise.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "note: no chromium/chromedriver; the browser test will skip"; }

# Phantoms -> fit -> score a mixed normal/abnormal set of new patients -> evaluate -> report.html
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/aeanomaly make-phantoms --out $(DEMO)/train --normal 48 --abnormal 0 --seed 1
	$(BIN)/aeanomaly make-phantoms --out $(DEMO)/test --normal 12 --abnormal 12 --seed 2 --lesion-mm 15 40
	$(BIN)/aeanomaly fit --normal-dir $(DEMO)/train/normal --out $(DEMO)/bundle --size 64 --epochs 12 \
		--calib-fraction 0.42 --val-fraction 0.1 --seed 0 \
		--noise-std 0.2 --noise-resolution 16 --sigma-mm 6 --blob-gate 0 --slice-norm area
	$(BIN)/aeanomaly info $(DEMO)/bundle
	$(BIN)/aeanomaly score $(DEMO)/bundle $(DEMO)/test/normal $(DEMO)/test/abnormal --out $(DEMO)/results
	$(BIN)/aeanomaly evaluate $(DEMO)/bundle --normal-dir $(DEMO)/test/normal --abnormal-dir $(DEMO)/test/abnormal \
		--masks $(DEMO)/test/masks --out $(DEMO)/evaluation
	@echo
	@echo "Done. Open $(DEMO)/results/report.html (scores in $(DEMO)/results/scores.csv, lesions in lesions.csv,"
	@echo "heatmaps aligned with each input scan in $(DEMO)/results/heatmaps/); detection metrics against the"
	@echo "injected lesion masks in $(DEMO)/evaluation/metrics.json (ROC/PR in roc_pr.png)."

# Fast tests first, then the slow end-to-end ones (marked @pytest.mark.slow), each suite on
# TEST_WORKERS pytest-xdist processes (0: in this process, serially). Test files are the unit of
# distribution (--dist loadfile), so a module's fixtures (a fitted head, a Ray cluster) are built once.
# On the 2-core CI machine two workers took the suites from 4:42 + 9:57 to 2:38 + 7:10 (clean clone; this
# release's clean-clone run: 2:16 + 5:40):
# much of a test's time is one-threaded (imports, CLI subprocesses, tiny models that do not fill two cores).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --durations=10
test: $(TEST_STAMP) browser
	$(PYTEST) -m "not slow"
	$(PYTEST) -m slow

# The benchmarks (hours on 2 cores); JSON in benchmarks/results/, the README tables from
# `python benchmarks/tables.py`.
bench: $(TEST_STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/real_ct.py
	$(BIN)/python benchmarks/real_ct_noise.py
	$(BIN)/python benchmarks/quality.py
	$(BIN)/python benchmarks/lesion_size.py
	$(BIN)/python benchmarks/fit.py
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/heatmap_write.py
	$(BIN)/python benchmarks/precision.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/tables.py

clean:
	rm -rf $(DEMO) build *.egg-info
