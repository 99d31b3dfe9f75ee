# The two commands of the README: `make demo` and `make test`. Each creates the venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

.PHONY: demo test runtimes bench bench-quick install jars wheel clean

$(STAMP): setup.py
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed"'
	@java -version >/dev/null 2>&1 || { echo "Java 17 is needed (java not found)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[spark,simulator,dev]"
	$(PY) -c 'from pi_stream_source.local_spark import delta_jars; delta_jars()'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

jars: $(STAMP)

# the wheel the bundle deploys and notebooks %pip install: dist/pi_stream_source-<version>-py3-none-any.whl
wheel: $(STAMP)
	$(PY) -m build --wheel

demo: $(STAMP)
	$(PY) -m pi_stream_source.cli demo $(ARGS)

# Kerberos tests need python-gssapi, built against MIT krb5 (libkrb5-dev); without it they skip
# (unless PI_STREAM_REQUIRE_KERBEROS=1, as in CI).
KRB_STAMP := $(VENV)/.kerberos-$(shell cat setup.py | cksum | cut -d' ' -f1)
$(KRB_STAMP): $(STAMP)
	@if command -v krb5-config >/dev/null 2>&1; then \
	  $(PY) -m pip install -q -e ".[kerberos]" && rm -f $(VENV)/.kerberos-* && touch $(KRB_STAMP); \
	else echo "note: libkrb5-dev not installed: the Kerberos tests will be skipped"; fi

# two pytest processes (pytest-xdist), a test file each at a time: the suite's tests mostly wait
# on streams, servers and child processes, so two take ~23 min here against ~34 min for one (2 cores)
TEST_WORKERS ?= 2
test: $(STAMP) $(KRB_STAMP)
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# the source's end-to-end tests on each supported pyspark line, each in its own cached venv
# (.ci/runtimes.sh; `make runtimes RUNTIMES="4.0.5 4.3.0"` runs some)
runtimes:
	bash .ci/runtimes.sh $(RUNTIMES)

# ours vs Spark's rate ceiling at 1k/10k/100k tags, ramps to the highest sustained rate, restart
# catch-up (~35-45 min on 2 cores); then offset size and append-vs-merge cost. `make bench-quick`:
# a ~5 min smoke run of the harness. Results: bench/results/<stamp>-stream.{json,md,png}, latest.png
bench: $(STAMP)
	$(PY) bench/stream_bench.py $(ARGS)
	$(PY) bench/exactly_once_bench.py --skip-catch-up

bench-quick: $(STAMP)
	$(PY) bench/stream_bench.py --quick $(ARGS)

clean:
	rm -rf $(VENV) demo_output build dist *.egg-info .pytest_cache
