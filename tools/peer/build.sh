#!/usr/bin/env bash
# Builds NetObserv's eBPF agent (the same-run peer of bench/bench_peer.py) from its source tarball,
# once per commit, into ${XTRACE_CACHE:-/var/cache/xtrace}/peer/<commit>/. Offline: the tarball
# vendors its modules. Nothing of the peer's source or binary enters this repository: it is unpacked
# into a temporary directory that is removed afterwards.
#   build.sh            builds if needed; prints the binary's path on stdout, progress on stderr
# The tarball and its no-fentry patch are looked for in $XTRACE_PEER_SRC_DIR, default
# ../shared/third_party relative to the repository root (of the main checkout, for a worktree).
# Exit 3 (one line) when it is not there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
commit=56a7d35
name=netobserv-ebpf-agent
# A git worktree's root is not the repository's: try the main checkout's sibling too.
common=$(git -C "$root" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
src_dir=${XTRACE_PEER_SRC_DIR:-}
if [ -z "$src_dir" ]; then
    for d in "$root/../shared/third_party" ${common:+"$(dirname "$common")/../shared/third_party"}; do
        [ -f "$d/$name-$commit-src.tar.xz" ] && { src_dir=$d; break; }
    done
    src_dir=${src_dir:-$root/../shared/third_party}
fi
tarball=$src_dir/$name-$commit-src.tar.xz
patch_file=$src_dir/netobserv-no-fentry.patch
cache_root=${XTRACE_CACHE:-/var/cache/xtrace}
out=$cache_root/peer/$commit
bin=$out/$name

die() { echo "peer build: $*" >&2; exit "${2:-1}"; }
say() { echo "[peer-build] $*" >&2; }

if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
[ -f "$tarball" ] || die "no peer source at $tarball (set XTRACE_PEER_SRC_DIR, or XTRACE_PEER_BIN to a built agent)" 3
[ -f "$patch_file" ] || die "no $patch_file beside the peer's source (the kernel refuses fentry; the agent needs it)" 3
command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH: install Go and run this again" 3
mkdir -p "$out" || die "cannot create $out (set XTRACE_CACHE to a writable directory)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "unpacking $(basename "$tarball")"
tar -xJf "$tarball" -C "$work"
(cd "$work" && patch -s -p0 < "$patch_file") || die "the no-fentry patch does not apply to $tarball"
say "building $name at $commit (offline, about a minute)"
t0=$SECONDS
(cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=vendor GOPROXY=off \
    go build -trimpath -o "$bin.tmp" ./cmd/$name.go) >&2 || { rm -f "$bin.tmp"; die "go build of $name failed (output above)"; }
mv "$bin.tmp" "$bin"
say "built in $((SECONDS - t0)) s"
echo "$bin"
