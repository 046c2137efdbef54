#!/usr/bin/env bash
# Opt-in image test (`make image-test`, not part of `make test`): builds Dockerfile.agent and
# Dockerfile.operator with podman, without a registry or a Docker engine, then runs both images for
# real (tests/image/: the agent on XDP against a veth test host with and without the host's kernel
# headers, the README's single-host line into a local VictoriaMetrics, a second agent refused; the
# operator's render and start with a read-only root; the images' sizes).
#
# Everything podman keeps (config, storage, the debootstrapped base) lives under $XTRACE_IMAGE_CACHE
# (default /var/cache/xtrace-image-test), so a second run reuses the base image and the build cache.
# XTRACE_IMAGE_REFRESH=1 starts from scratch. Needs root (debootstrap, XDP, network namespaces).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
CACHE=${XTRACE_IMAGE_CACHE:-/var/cache/xtrace-image-test}
BASE=docker.io/library/debian:bookworm-slim
export XTRACE_AGENT_IMAGE=${XTRACE_AGENT_IMAGE:-localhost/xtrace-agent:test}
export XTRACE_OPERATOR_IMAGE=${XTRACE_OPERATOR_IMAGE:-localhost/xtrace-operator:test}
# every container and test host this tool makes carries these names, so cleanup never touches others'
export XTRACE_IMAGE_LABEL=xtrace-image-test
HOST_PREFIX=xtim

say() { printf '== %s\n' "$*"; }
die() { printf 'image-test: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, podman storage, XDP on a veth)"
[ -x "$PY" ] || die "$PY not found: run 'make setup' first"
VERSION=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$ROOT/pyproject.toml")
START=$(date +%s)

install_tools() {
    # crun fails on this host's hybrid cgroups: runc is the runtime (podman accepts either)
    local missing="" p
    for p in podman runc debootstrap docker-registry; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        say "installing:$missing"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
    fi
}

hard_limit() {  # hard_limit FLAG CAP: the host's hard limit, at most CAP (podman's defaults exceed it here)
    local v; v=$(ulimit "$1")
    if [ "$v" = unlimited ] || [ "$v" -gt "$2" ]; then v=$2; fi
    echo "$v"
}

configure_podman() {
    mkdir -p "$CACHE/podman/root" "$CACHE/podman/run" "$CACHE/podman/tmp"
    local nofile nproc
    nofile=$(hard_limit -Hn 1048576)
    # podman 4.3 lowers its own nproc hard limit to 32768 at start, and its children cannot raise it
    nproc=$(hard_limit -Hu 32768)
    cat >"$CACHE/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$CACHE/podman/root"
runroot = "$CACHE/podman/run"
EOF
    cat >"$CACHE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$CACHE/podman/events.log"
tmp_dir = "$CACHE/podman/tmp"
EOF
    export CONTAINERS_STORAGE_CONF=$CACHE/storage.conf CONTAINERS_CONF=$CACHE/containers.conf
}

base_image() {
    if podman image exists "$BASE"; then
        say "base image $BASE: cached"
        return
    fi
    local tarball=$CACHE/bookworm-minbase.tar
    if [ ! -s "$tarball" ]; then
        say "debootstrap --variant=minbase bookworm (about 30 s)"
        local rootfs=$CACHE/rootfs.tmp
        rm -rf "$rootfs"
        debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 \
            || die "debootstrap failed, see $CACHE/debootstrap.log"
        # the same sources as Debian's own image: point releases and security updates too
        rm -f "$rootfs/etc/apt/sources.list"
        cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    say "podman import $BASE"
    podman import "$tarball" "$BASE" >/dev/null
}

pip_trust() {
    # A host behind a TLS-intercepting proxy (this one) trusts the proxy's CA in its own bundle only, and
    # the base image does not. pip in the build gets the host's bundle through root's pip config, mounted
    # for RUN steps only: the images keep no trace of it (an empty /root/.config/pip directory at most).
    local dir=$CACHE/pip-build
    mkdir -p "$dir"
    if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
        cp /etc/ssl/certs/ca-certificates.crt "$dir/host-ca.crt"
        printf '[global]\ncert = /root/.config/pip/host-ca.crt\n' >"$dir/pip.conf"
    fi
    BUILD_MOUNTS=(-v "$dir:/root/.config/pip:ro")
    export XTRACE_BUILD_MOUNTS="-v $dir:/root/.config/pip:ro"
}

# the build arguments `make images` passes (the OCI labels' values): one place, the Makefile
read -r -a IMAGE_ARGS <<<"$(make -s --no-print-directory -C "$ROOT" image-args)"
# the flags this host's builds need, for `make push` in tests/image/test_registry.py too
export XTRACE_BUILD_FLAGS="--isolation chroot --network host --pull=never --layers"

build() {  # build FILE IMAGE
    say "podman build -f $1 -t $2"
    local t0=$SECONDS log=$CACHE/build-$(basename "$1").log target
    # the `build` stage tagged too: its layers are not the image's ancestors, so the prune below
    # would take them (and the next run's cache) otherwise
    : >"$log"
    for target in build ""; do
        podman build $XTRACE_BUILD_FLAGS "${BUILD_MOUNTS[@]}" \
            "${IMAGE_ARGS[@]}" -f "$ROOT/$1" ${target:+--target "$target"} \
            -t "${2%:*}${target:+-$target}:${2##*:}" "$ROOT" >>"$log" 2>&1 \
            || { tail -n 30 "$log" >&2; die "building $1 failed (log: $log)"; }
    done
    say "built $2 in $((SECONDS - t0)) s"
}

cleanup() {
    local ids ns
    ids=$(podman ps -aq --filter "label=$XTRACE_IMAGE_LABEL" 2>/dev/null || true)
    [ -z "$ids" ] || podman rm -f -t 0 $ids >/dev/null 2>&1 || true
    # test hosts left by an interrupted run (the tests remove their own otherwise)
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$HOST_PREFIX" || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
    ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^xb${HOST_PREFIX#xt}" \
        | while read -r dev; do ip link del "$dev" 2>/dev/null || true; done || true
}

if [ "${XTRACE_IMAGE_REFRESH:-0}" = 1 ] && [ -d "$CACHE" ]; then
    say "XTRACE_IMAGE_REFRESH=1: removing $CACHE"
    CONTAINERS_STORAGE_CONF=$CACHE/storage.conf CONTAINERS_CONF=$CACHE/containers.conf \
        podman system reset --force >/dev/null 2>&1 || true
    rm -rf "$CACHE"
fi
mkdir -p "$CACHE"
install_tools
configure_podman
trap cleanup EXIT
trap 'exit 130' INT TERM  # so that cleanup runs on Ctrl-C too
cleanup
base_image
pip_trust
build Dockerfile.agent "$XTRACE_AGENT_IMAGE"
build Dockerfile.operator "$XTRACE_OPERATOR_IMAGE"
podman image prune -f >/dev/null 2>&1 || true  # the previous build's images, now untagged
if [ -x "$ROOT/tools/vm/build.sh" ] || [ -f "$ROOT/tools/vm/build.sh" ]; then
    say "VictoriaMetrics for the single-host test (tools/vm/build.sh, cached)"
    bash "$ROOT/tools/vm/build.sh" >/dev/null || die "building VictoriaMetrics failed"
fi
say "running the images (tests/image)"
set +e
# XTRACE_REQUIRE_BPF=1: a prerequisite missing here (root, XDP, VictoriaMetrics) fails, never skips
(cd "$ROOT" && XTRACE_IMAGE_TESTS=1 XTRACE_REQUIRE_BPF=1 "$PY" -m pytest -q -p no:cacheprovider tests/image "$@")
rc=$?
set -e
say "image-test finished in $(( $(date +%s) - START )) s (exit $rc)"
exit $rc
