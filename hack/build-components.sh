#!/usr/bin/env bash
# Build the pinned control-plane, etcd and MinIO binaries from their Go
# modules into a cache outside the repository, once per version.
#
# Why a script and not `go install`: k8s.io/kubernetes and etcd's server
# module carry `replace` directives pointing at local paths, which `go install
# module@version` refuses. We generate a tiny wrapper module that requires the
# real module and replaces each local-path module with its published version.
#
# Every binary is built to a temporary name and renamed into place last, so an
# interrupted cold build never leaves a half-written binary that a later run
# would trust. A component directory is complete when it holds `.complete`.
#
# Usage: hack/build-components.sh [component...]
#   components: kubernetes kubernetes-node etcd minio mc promtool
#   (default: all but kubernetes-node, which only the e2e tier needs)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${CITUS_BACKUP_CACHE:-$HOME/.cache/citus-backup-operator}"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0

log() { printf '[build-components] %s\n' "$*" >&2; }

# done_dir COMPONENT VERSION -> prints the target dir; returns 0 if complete.
target_dir() { printf '%s/bin/%s-%s' "$cache" "$1" "$2"; }

finish() { # finish DIR: mark a component directory complete
  touch "$1/.complete.tmp" && mv "$1/.complete.tmp" "$1/.complete"
}

# build_kubernetes COMPONENT CMD...: build commands of k8s.io/kubernetes into
# the component's own cache directory. The control plane and the node
# components are separate components so that the integration tier, which needs
# no node, never waits for a kubelet build.
build_kubernetes() {
  local component="$1"; shift
  local ver="$KUBERNETES_VERSION" dir; dir="$(target_dir "$component" "$ver")"
  [[ -f "$dir/.complete" ]] && { log "$component $ver: cached in $dir"; return; }
  log "$component $ver: building $* (cold: ~5 min per command on 2 cores)"
  mkdir -p "$dir"
  local work; work="$(mktemp -d)"; trap 'rm -rf "$work"' RETURN
  local staging="v0${ver#v1}"   # v1.34.4 -> v0.34.4 (staging modules' tag)
  (
    cd "$work"
    go mod init citus-backup-operator.local/kubernetes-wrapper >/dev/null 2>&1
    go mod edit -require="k8s.io/kubernetes@$ver"
    go mod download -json "k8s.io/kubernetes@$ver" >/dev/null
    local gomod; gomod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$ver.mod"
    # Each `k8s.io/x => ./staging/src/k8s.io/x` becomes `k8s.io/x => k8s.io/x v0.y.z`.
    grep -oE 'k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u |
      while read -r m; do go mod edit -replace="$m=$m@$staging"; done
    # Let the go command resolve the rest of the graph (go.sum, indirect deps)
    # for all three commands at once: each pulls packages the others do not.
    local cmds=("$@") pkgs=() c
    for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c@$ver"); done
    go get "${pkgs[@]}" >/dev/null 2>&1 || go get "${pkgs[@]}"
    local major minor; major="$(cut -d. -f1 <<<"${ver#v}")"; minor="$(cut -d. -f2 <<<"$ver")"
    local ld="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X $pkg.gitVersion=$ver -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
      ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    for cmd in "${cmds[@]}"; do
      log "  go build $cmd"
      go build -trimpath -ldflags "$ld" -o "$dir/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
      mv "$dir/$cmd.tmp" "$dir/$cmd"
    done
  )
  finish "$dir"
}

build_etcd() {
  local ver="$ETCD_VERSION" dir; dir="$(target_dir etcd "$ver")"
  [[ -f "$dir/.complete" ]] && { log "etcd $ver: cached in $dir"; return; }
  log "etcd $ver: building etcd"
  mkdir -p "$dir"
  local work; work="$(mktemp -d)"; trap 'rm -rf "$work"' RETURN
  (
    cd "$work"
    go mod init citus-backup-operator.local/etcd-wrapper >/dev/null 2>&1
    # etcd's own binary is a three-line main calling etcdmain.Main.
    cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go mod edit -require="go.etcd.io/etcd/server/v3@$ver"
    for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do
      go mod edit -replace="go.etcd.io/etcd/$m=go.etcd.io/etcd/$m@$ver"
    done
    go mod tidy >/dev/null 2>&1 || go mod tidy
    go build -trimpath -ldflags "-s -w" -o "$dir/etcd.tmp" .
    mv "$dir/etcd.tmp" "$dir/etcd"
  )
  finish "$dir"
}

build_plain() { # build_plain NAME MODULE VERSION: modules without local replaces
  local name="$1" mod="$2" ver="$3" dir; dir="$(target_dir "$name" "$ver")"
  [[ -f "$dir/.complete" ]] && { log "$name $ver: cached in $dir"; return; }
  log "$name $ver: building $mod"
  mkdir -p "$dir"
  local gobin; gobin="$(mktemp -d)"; trap 'rm -rf "$gobin"' RETURN
  GOBIN="$gobin" go install -trimpath -ldflags "-s -w" "$mod@$ver"
  mv "$gobin/$name" "$dir/$name.tmp" && mv "$dir/$name.tmp" "$dir/$name"
  finish "$dir"
}

components=("$@")
[[ ${#components[@]} -eq 0 ]] && components=(etcd minio mc kubernetes promtool)
command -v go >/dev/null || { log "error: 'go' not found on PATH; install Go >= 1.24"; exit 1; }
for c in "${components[@]}"; do
  case "$c" in
    kubernetes) build_kubernetes kubernetes kube-apiserver kube-controller-manager kubectl ;;
    kubernetes-node) build_kubernetes kubernetes-node kubelet kube-scheduler kube-proxy ;;
    etcd) build_etcd ;;
    minio) build_plain minio github.com/minio/minio "$MINIO_VERSION" ;;
    mc) build_plain mc github.com/minio/mc "$MC_VERSION" ;;
    promtool) build_plain promtool github.com/prometheus/prometheus/cmd/promtool "$PROMETHEUS_VERSION" ;;
    *) log "error: unknown component '$c' (known: kubernetes kubernetes-node etcd minio mc promtool)"; exit 2 ;;
  esac
done
