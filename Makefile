# liftshift — one entry point for building, testing and benchmarking.
# Every target that runs Python creates .venv and installs the project first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CC     ?= cc
CFLAGS ?= -O2 -g -Wall -Wextra -Werror -std=gnu11
# The slowest tests are listed at the end of every run: the suite must stay well under 15 minutes.
PYTEST_ARGS ?= --durations=15

LIB    := build/lib/libliftshift_ring.so
STRESS := build/bin/ring_stress
APPLY  := build/lib/libliftshift_apply.so
C_SRC  := iofilter/liftshift_ring.c iofilter/liftshift_ring.h
NBD_SRC := iofilter/liftshift_nbd.c iofilter/liftshift_nbd.h

.PHONY: all venv cbuild proto test bench lint clean demo

all: venv cbuild

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,charts]'
	touch $@

venv: $(STAMP)

# The ring library also carries liftshift-nbd's C path for plain writes.
$(LIB): $(C_SRC) $(NBD_SRC)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC -shared -o $@ iofilter/liftshift_ring.c iofilter/liftshift_nbd.c -lxxhash -lpthread

$(STRESS): $(C_SRC) iofilter/ring_stress.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ iofilter/ring_stress.c iofilter/liftshift_ring.c -lxxhash -lpthread

# The sink's C fast path for live frames (sink/capply.py loads it; without it
# the sink falls back to the Python apply path).
$(APPLY): sink/liftshift_apply.c iofilter/liftshift_ring.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC -shared -o $@ sink/liftshift_apply.c -lxxhash

cbuild: $(LIB) $(STRESS) $(APPLY)

# Regenerate the Python modules from the .proto contracts (grpcio-tools is
# pinned in pyproject.toml so the output is reproducible; a test checks drift).
PROTOS := $(wildcard proto/liftshift/v1/*.proto)
proto: venv
	$(PY) -m grpc_tools.protoc -I proto --python_out=proto --grpc_python_out=proto --pyi_out=proto $(PROTOS)

# A live migration end to end on this machine (sink + daemon + a sim VM on
# loopback, in a temporary directory); leaves nothing running.
demo: venv
	$(PY) -m liftshift.ctl.demo

test: venv cbuild
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv cbuild
	$(PY) tests/bench/run.py --out bench-results.json

lint: venv
	$(PY) -m ruff check iofilter daemon sink ctl tests
	$(PY) -m mypy iofilter daemon sink ctl

clean:
	rm -rf build bench-results.json .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
