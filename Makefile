# XTrace: `make demo` runs the main job on this machine, `make test` checks everything.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-bpfcc python3-numpy python3-yaml python3-venv libbpf1 linux-headers-amd64 bpftool iproute2 victoria-metrics openssl xz-utils util-linux python3-matplotlib
STAMP := $(VENV)/.xtrace-installed

.PHONY: setup test bench lint demo clean

setup: $(STAMP)

# Debian packages first (BCC imports only in the system python), then a venv that sees them.
$(STAMP): pyproject.toml Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[operator,test]'
	@touch $(STAMP)

test: setup vm
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup vm
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# VictoriaMetrics built from its Go module at the release in tools/vm/versions.env, cached under
# $${XTRACE_CACHE:-/var/cache/xtrace}/vm/<version>/bin (tests and benchmarks use it). vm-cluster:
# three vmstorage, vminsert -replicationFactor=2 and vmselect on 127.0.0.1 (.vmcluster/urls.json).
.PHONY: vm vm-cluster vm-cluster-down
vm:
	@bash tools/vm/build.sh >/dev/null

vm-cluster: setup
	@$(PY) tools/vm/cluster.py up

vm-cluster-down:
	@$(PY) tools/vm/cluster.py down

lint: setup
	$(VENV)/bin/ruff check agent operator tests bench tools

demo: setup
	$(PY) tools/demo.py

# deploy/dashboards/*.json and deploy/rules/ are generated: edit tools/dashboards.py or tools/rules.py, then this.
.PHONY: dashboards
dashboards: setup
	$(PY) tools/rules.py && $(PY) tools/dashboards.py

# Opt-in, not part of `make test`: builds Dockerfile.agent and Dockerfile.operator with podman (no
# registry) and runs both images for real; caches under /var/cache/xtrace-image-test.
.PHONY: image-test
image-test: setup
	bash tools/image_test.sh $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
