#!/usr/bin/env bash
# Builds Helm from its Go module (helm.sh/helm/v4) once per version into a cache outside the checkout,
# like tools/cluster/build.sh builds the control plane: ${XTRACE_CACHE:-/var/cache/xtrace}/helm/<version>/bin/helm.
# helm's go.mod has no replace directives, so `go install module@version` builds it as released.
# Prints the binary's path on stdout, progress on stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

die() { echo "make helm-bin: $*" >&2; exit 1; }
say() { echo "[helm-build] $*" >&2; }

cache_root=${XTRACE_CACHE:-/var/cache/xtrace}
bin="$cache_root/helm/$HELM_VERSION/bin"
if [ -x "$bin/helm" ]; then
    echo "$bin/helm"
    exit 0
fi
command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH to build Helm: install Go >= 1.26"
mkdir -p "$bin" || die "cannot create the cache directory $bin (set XTRACE_CACHE to a writable directory)"
tmp=$(mktemp -d "$bin/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
say "building helm.sh/helm/v4/cmd/helm@$HELM_VERSION (a few minutes the first time)"
t0=$SECONDS
# version stamped as helm's own Makefile does, so `helm version` names the release
CGO_ENABLED=0 GOFLAGS=-mod=mod GOBIN="$tmp" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2 || die "building helm $HELM_VERSION failed (output above)"
mv "$tmp/helm" "$bin/helm"
say "helm $HELM_VERSION built in $((SECONDS - t0)) s"
echo "$bin/helm"
