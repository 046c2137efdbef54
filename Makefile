# XTrace: `make demo` runs the main job on this machine, `make test` checks everything.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-bpfcc python3-numpy python3-yaml python3-venv libbpf1 linux-headers-amd64 bpftool iproute2 victoria-metrics openssl xz-utils util-linux python3-matplotlib nftables
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

test: setup vm vm-cluster-bin cluster-bin
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup vm vm-cluster-bin cluster-bin
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# VictoriaMetrics built from its Go module at the releases in tools/vm/versions.env, cached under
# $${XTRACE_CACHE:-/var/cache/xtrace}/vm/<version>/bin (tests and benchmarks use it). The cluster binaries
# (vm-cluster-bin) come from the module where the proxy serves the -cluster tag, else from the tag's source
# archive: XTRACE_VM_CLUSTER_SRC, by default ../shared/third_party/ beside the checkout when it is there.
# vm-cluster: three vmstorage, vminsert and vmselect (both -replicationFactor=2) on 127.0.0.1 (.vmcluster/).
VM_CLUSTER_ARCHIVE := $(abspath ../shared/third_party/victoriametrics-$(shell bash -c 'source tools/vm/versions.env && echo $$VM_CLUSTER_VERSION')-src.tar.xz)
export XTRACE_VM_CLUSTER_SRC ?= $(wildcard $(VM_CLUSTER_ARCHIVE))
.PHONY: vm vm-cluster-bin vm-cluster vm-cluster-down
vm:
	@bash tools/vm/build.sh >/dev/null

vm-cluster-bin:
	@bash tools/vm/build.sh cluster >/dev/null

vm-cluster: setup
	@$(PY) tools/vm/cluster.py up

vm-cluster-down:
	@$(PY) tools/vm/cluster.py down

# A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok with three fake nodes, built once from their Go modules (tools/cluster,
# cached under $${XTRACE_CACHE:-/var/cache/xtrace}/cluster/<versions>/bin; the first build takes minutes).
# Writes .cluster/kubeconfig and .cluster/bin/kubectl. The tests start their own on other ports.
.PHONY: cluster cluster-down cluster-bin
cluster:
	@/usr/bin/python3 tools/cluster/cluster.py up

cluster-down:
	@/usr/bin/python3 tools/cluster/cluster.py down

cluster-bin:
	@bash tools/cluster/build.sh >/dev/null

lint: setup
	$(VENV)/bin/ruff check agent operator tests bench tools

demo: setup vm
	$(PY) tools/demo.py

# The CRD's schema is generated from operator/xtrace_operator/spec.py (and the agent's field
# descriptors in agent/xtrace_agent/config.py): edit those, then this.
.PHONY: crd
crd: setup
	$(PY) tools/crd.py

# deploy/dashboards/*.json and deploy/rules/ are generated: edit tools/dashboards.py or tools/rules.py, then this.
.PHONY: dashboards
dashboards: setup
	$(PY) tools/rules.py && $(PY) tools/dashboards.py

# Opt-in, not part of `make test`: builds Dockerfile.agent and Dockerfile.operator with podman (no
# registry) and runs both images for real; caches under /var/cache/xtrace-image-test.
.PHONY: image-test images push
image-test: setup
	bash tools/image_test.sh $(PYTEST_ARGS)

# The images, tagged with the project version (pyproject.toml, the one place it is written):
# `make images` builds $(REGISTRY)/xtrace-agent:$(VERSION) and .../xtrace-operator:$(VERSION) with
# podman, or docker where an engine runs (ENGINE=... to choose); `make push REGISTRY=...` pushes them.
VERSION = $(shell python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
REGISTRY ?= ghcr.io/xtrace-io
ENGINE ?= $(shell if command -v podman >/dev/null; then echo podman; elif docker info >/dev/null 2>&1; then echo docker; fi)
images:
	@test -n "$(ENGINE)" || { echo "make images: needs podman, or docker with a running engine" >&2; exit 1; }
	$(ENGINE) build --build-arg VERSION=$(VERSION) -f Dockerfile.agent -t $(REGISTRY)/xtrace-agent:$(VERSION) .
	$(ENGINE) build --build-arg VERSION=$(VERSION) -f Dockerfile.operator -t $(REGISTRY)/xtrace-operator:$(VERSION) .

push: images
	$(ENGINE) push $(REGISTRY)/xtrace-agent:$(VERSION)
	$(ENGINE) push $(REGISTRY)/xtrace-operator:$(VERSION)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
