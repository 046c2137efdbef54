# XTrace: `make demo` runs the main job on this machine, `make test` checks everything.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-bpfcc python3-numpy python3-yaml python3-venv libbpf1 linux-headers-amd64 bpftool iproute2 victoria-metrics openssl xz-utils util-linux python3-matplotlib ethtool python3-cryptography nftables
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

test: setup vm vm-cluster-bin cluster-bin helm-bin
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

# Helm built from its Go module (tools/helm/versions.env), cached under
# $${XTRACE_CACHE:-/var/cache/xtrace}/helm/<version>/bin/helm; tests/helm uses it. The chart's CRD is a
# copy of deploy/crds' (tests/helm checks it byte for byte): `make helm-crd` after changing the CRD.
.PHONY: helm-bin helm-crd
helm-bin:
	@bash tools/helm/build.sh >/dev/null

helm-crd:
	cp deploy/crds/xtrace.io_xtracemonitors.yaml deploy/helm/xtrace/crds/

lint: setup
	$(VENV)/bin/ruff check agent operator tests bench tools

demo: setup vm
	$(PY) tools/demo.py

# The CRD's schema is generated from operator/xtrace_operator/spec.py (and the agent's field
# descriptors in agent/xtrace_agent/config.py): edit those, then this.
.PHONY: crd
crd: setup
	$(PY) tools/crd.py

# The kubelet pod-resources stubs are committed (the agent's image needs no compiler); this
# regenerates them from agent/xtrace_agent/owners/api.proto, tests/owners/test_stubs.py checks them.
.PHONY: podresources-stubs
podresources-stubs: setup
	cd agent && ../$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. xtrace_agent/owners/api.proto

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
# podman, or docker where an engine runs (ENGINE=... to choose); `make push REGISTRY=...` pushes them
# and prints each pushed digest (podman). Both carry the OCI labels source, version, revision (the
# commit built) and licenses (pyproject.toml's `license`, NOASSERTION while it names none).
# BUILD_FLAGS / PUSH_FLAGS pass engine flags (tools/image_test.sh: chroot isolation; a local
# registry without TLS: PUSH_FLAGS=--tls-verify=false).
PROJECT = python3 -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(eval(sys.argv[1]))'
VERSION = $(shell $(PROJECT) 'p["version"]')
SOURCE = $(shell $(PROJECT) 'p["urls"]["Source"]')
LICENSES = $(shell $(PROJECT) 'p.get("license") or "NOASSERTION"')
REVISION = $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
REGISTRY ?= ghcr.io/xtrace-io
ENGINE ?= $(shell if command -v podman >/dev/null; then echo podman; elif docker info >/dev/null 2>&1; then echo docker; fi)
BUILD_FLAGS ?=
PUSH_FLAGS ?=
IMAGE_ARGS = --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) --build-arg SOURCE=$(SOURCE) --build-arg LICENSES=$(LICENSES)
.PHONY: image-args
image-args:  # what every image build passes (tools/image_test.sh builds with it too)
	@echo $(IMAGE_ARGS)

images:
	@test -n "$(ENGINE)" || { echo "make images: needs podman, or docker with a running engine" >&2; exit 1; }
	$(ENGINE) build $(BUILD_FLAGS) $(IMAGE_ARGS) -f Dockerfile.agent -t $(REGISTRY)/xtrace-agent:$(VERSION) .
	$(ENGINE) build $(BUILD_FLAGS) $(IMAGE_ARGS) -f Dockerfile.operator -t $(REGISTRY)/xtrace-operator:$(VERSION) .

push: images
	@mkdir -p build
	@for image in xtrace-agent xtrace-operator; do \
		ref=$(REGISTRY)/$$image:$(VERSION); \
		if [ "$(ENGINE)" = podman ]; then \
			$(ENGINE) push $(PUSH_FLAGS) --digestfile build/$$image.digest $$ref || exit 1; \
			echo "pushed $(REGISTRY)/$$image@$$(cat build/$$image.digest)"; \
		else \
			$(ENGINE) push $(PUSH_FLAGS) $$ref || exit 1; \
		fi; \
	done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
