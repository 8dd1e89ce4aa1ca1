# squid-helper: the two quick-start commands are `sudo make serve` and `sudo make test`.
# Everything else here is what those two need.

PYTHON     ?= /usr/bin/python3
# Squid runs the helper as its user (`proxy` on Debian, `squid` on EL/Fedora): the venv must
# live where that user can read it (not under /root), and be built from the system Python (not
# a pyenv under /root).
VENV       ?= $(if $(filter 0,$(shell id -u)),/opt/squid-helper/venv,$(CURDIR)/.venv)
CONFIG     ?= repos.yaml
DIR        ?= /var/tmp/squid-helper
PORT       ?= 3128
ACCEL_PORT ?= 5000
# the address Squid listens on (serve --listen), e.g. LISTEN=10.1.0.2; empty: every address
LISTEN     ?=
PYTEST_ARGS ?=
# the lab's networks allowed to use the proxy, e.g. ALLOW="10.1.2.0/24 10.1.3.0/24" (default:
# every private network; localhost always)
ALLOW      ?=
# the default venv's squid-helper is linked here, so that the bare command works (as root)
BIN_LINK   ?= /usr/local/bin/squid-helper

# command:package pairs the product and its tests use, on Debian/Ubuntu (apt-get) and on
# EL 9/Fedora (dnf, where there is no apt-get); packaging/install-deps installs what is missing
DEBIAN_DEPS = squid:squid squidclient:squidclient dnf:dnf createrepo_c:createrepo-c rpmbuild:rpm \
	rpm2archive:rpm2cpio systemd-analyze:systemd logrotate:logrotate redis-server:redis-server
RPM_DEPS   = squid:squid squidclient:squid dnf:dnf createrepo_c:createrepo_c rpmbuild:rpm-build \
	rpm2archive:rpm systemd-analyze:systemd logrotate:logrotate redis-server:redis

SOURCES = setup.cfg pyproject.toml $(wildcard squid_helper/*.py squid_helper/*/*.py squid_helper/templates/* squid_helper/templates/errors/*)

.PHONY: serve test unit e2e install system-deps lint bench rpm install-service

# serve checks CONFIG itself, and runs the helpers on a private copy (memo and log under DIR)
serve: system-deps install
	$(VENV)/bin/squid-helper serve --config $(CONFIG) --dir $(DIR) --port $(PORT) \
		--accel-port $(ACCEL_PORT) $(if $(LISTEN),--listen $(LISTEN)) \
		$(foreach net,$(ALLOW),--allow $(net))

# Two tiers: tests/unit (pure logic, any user, no Squid or network, under a minute) first, and
# only if it passes, the end-to-end tier (everything else under tests/: real Squid, dnf, Redis,
# mirrors on loopback; root).
PYTEST     = $(VENV)/bin/python -m pytest -ra $(PYTEST_ARGS)
UNIT_TESTS = tests/unit
E2E_TESTS  = --ignore=tests/unit tests

test: system-deps install
	$(VENV)/bin/ruff check .
	$(PYTEST) $(UNIT_TESTS)
	$(PYTEST) $(E2E_TESTS)

unit: install
	$(PYTEST) $(UNIT_TESTS)

e2e: system-deps install
	$(PYTEST) $(E2E_TESTS)

# One stamp per source tree: a venv shared by two checkouts (CI's clean clone and this one)
# must be reinstalled when the other one installed into it last.
STAMP      = $(VENV)/.installed-$(subst /,_,$(CURDIR))

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet '.[test]'
	packaging/link-squid-error-pages $(VENV)/share/squid-helper/errors
	chmod -R a+rX $(VENV)
	if [ "$$(id -u)" = 0 ] && [ "$(VENV)" = /opt/squid-helper/venv ]; then \
		ln -sfn $(VENV)/bin/squid-helper $(BIN_LINK); fi
	rm -f $(VENV)/.installed*
	touch $@

system-deps:
	@DEBIAN_DEPS="$(DEBIAN_DEPS)" RPM_DEPS="$(RPM_DEPS)" PYTHON="$(PYTHON)" packaging/install-deps

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(VENV)/bin/python benchmarks/run_all.py

# The noarch RPM for EL 9/Fedora (dist/rpmbuild/RPMS/noarch/), built from this tree.
rpm:
	packaging/build-rpm

# From a clone, without the RPM (Debian/Ubuntu, or EL/Fedora): squid-helper.service running
# this venv's squid-helper, its environment file, logrotate, /etc/squid-helper/repos.yaml and
# the directories, owned by Squid's user. Then: systemctl enable --now squid-helper
install-service: system-deps install
	packaging/install-service --bin $(VENV)/bin/squid-helper --python $(VENV)/bin/python
