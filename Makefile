# Two entry points for a fresh machine: `make run` and `make test`.
# Both create .venv, install fanoutd (building its C forwarding loop) and
# whatever they need; `make test` also installs the system packages the
# test suite drives for real (it uses apt-get, so run it as root).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install system-deps bench soak clean install-service uninstall-service reference deb deb-wheels

$(STAMP): pyproject.toml setup.py $(wildcard fanoutd/dataplane/*.c fanoutd/dataplane/*.h) fanoutd/dataplane/limits.py
	sh .ci/system-deps build
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

run: install
	$(BIN)/fanoutd

system-deps:
	sh .ci/system-deps

test: system-deps install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The files generated from the code (systemd/fanoutd.toml, docs/configuration.md,
# docs/metrics.md, fanoutd/_config_type.pyi); tests/test_reference.py fails when
# a checked-in one differs from what the code generates.
reference: install
	$(BIN)/python -m fanoutd.reference

# Side-by-side benchmarks, every mode (writes bench/results.md, results.json,
# results.png and fleet.png; about 40 minutes); needs the system packages of
# `make system-deps` and, for the plots, matplotlib.
bench: install system-deps
	$(BIN)/pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/run.py --modes all

# Ten minutes of traffic with a stalled subscriber, a producer restart and a
# broker restart; every message accounted for per path (bench/soak.md).
soak: install
	$(BIN)/python bench/soak.py --seconds 600 --out bench/soak.md

# fanoutd as a systemd service, in its own virtualenv (/opt/fanoutd, or
# PREFIX=...); the system Python is left alone. Run as root. WHEELS=DIR
# installs offline from a directory of wheels, CURVE=1 adds the
# LoadCredential= drop-in for the CURVE secret key. See systemd/install.sh.
install-service:
	sh systemd/install.sh $(if $(WHEELS),--wheels '$(WHEELS)') $(if $(CURVE),--curve)

uninstall-service:
	sh systemd/install.sh --uninstall

# The Debian package (Debian 12 and its python3), built with dh-virtualenv
# into DEB_OUT (default build/deb): fanoutd_<version>_<arch>.deb. Offline
# from WHEELS=DIR, a directory of the wheels of fanoutd's dependencies and
# build requirements; without WHEELS, `make deb-wheels` first fills
# $(DEB_OUT)/wheels from the package index. DEB_VERSION=V builds the package
# as version V (a changelog entry added in the build copy). The build runs in
# a copy of the tree, so nothing is written into it. Needs the packages of
# `.ci/system-deps deb`. See docs/operations.md, "The Debian package".
DEB_OUT ?= build/deb
DEB_PYTHON ?= /usr/bin/python3
deb-wheels:
	sh .ci/system-deps deb
	sh debian/build.sh wheels '$(DEB_OUT)/wheels' '$(DEB_PYTHON)'

deb: $(if $(WHEELS),,deb-wheels)
	sh .ci/system-deps deb
	sh debian/build.sh deb '$(DEB_OUT)' '$(or $(WHEELS),$(DEB_OUT)/wheels)' '$(DEB_VERSION)'

clean:
	rm -rf $(VENV) build *.egg-info fanoutd/*.so fanoutd/dataplane/*.so
