# squid-helper: the two quick-start commands are `sudo make serve` and `sudo make test`.
# Everything else here is what those two need.

PYTHON     ?= /usr/bin/python3
# Squid runs the helper as user `proxy`: the venv must live where that user can read it
# (not under /root), and be built from the system Python (not a pyenv under /root).
VENV       ?= $(if $(filter 0,$(shell id -u)),/opt/squid-helper/venv,$(CURDIR)/.venv)
CONFIG     ?= repos.yaml
DIR        ?= /var/tmp/squid-helper
PORT       ?= 3128
ACCEL_PORT ?= 5000
PYTEST_ARGS ?=
# the lab's networks allowed to use the proxy, e.g. ALLOW="10.1.2.0/24 10.1.3.0/24" (default:
# every private network; localhost always)
ALLOW      ?=
# the default venv's squid-helper is linked here, so that the bare command works (as root)
BIN_LINK   ?= /usr/local/bin/squid-helper

# command:debian-package pairs the product and its tests use
DEBIAN_DEPS = squid:squid squidclient:squidclient dnf:dnf createrepo_c:createrepo-c rpmbuild:rpm \
              redis-server:redis-server

SOURCES = setup.cfg pyproject.toml $(wildcard squid_helper/*.py squid_helper/templates/* squid_helper/templates/errors/*)

.PHONY: serve test install system-deps lint bench

# serve checks CONFIG itself, and runs the helpers on a private copy (memo and log under DIR)
serve: system-deps install
	$(VENV)/bin/squid-helper serve --config $(CONFIG) --dir $(DIR) --port $(PORT) \
		--accel-port $(ACCEL_PORT) $(foreach net,$(ALLOW),--allow $(net))

test: system-deps install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -ra $(PYTEST_ARGS)

# One stamp per source tree: a venv shared by two checkouts (CI's clean clone and this one)
# must be reinstalled when the other one installed into it last.
STAMP      = $(VENV)/.installed-$(subst /,_,$(CURDIR))

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet '.[test]'
	chmod -R a+rX $(VENV)
	if [ "$$(id -u)" = 0 ] && [ "$(VENV)" = /opt/squid-helper/venv ]; then \
		ln -sfn $(VENV)/bin/squid-helper $(BIN_LINK); fi
	rm -f $(VENV)/.installed*
	touch $@

system-deps:
	@missing=""; \
	for pair in $(DEBIAN_DEPS); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "missing Debian packages:$$missing (run as root, or: sudo apt-get install$$missing)"; \
			exit 1; \
		fi; \
		echo "installing Debian packages:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$$missing python3-venv >/dev/null; \
	fi
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null)

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(VENV)/bin/python benchmarks/run_all.py
