#!/usr/bin/env bash
# Builds the local cluster's binaries from the Go module proxy into a cache
# outside the checkout, one directory per component and version:
#   $BERTH_CACHE/<component>-<version>/bin/...
# A directory that holds a .done marker is reused as it is.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.sh"
. "$here/lib.sh"

# wrapper DIR [PACKAGE...]: starts an empty wrapper module in DIR (and cds
# there) whose tools.go imports the PACKAGEs to build, so that `go mod tidy`
# resolves them with the wrapper's requires and replaces.
wrapper() {
	local dir=$1; shift
	rm -rf "$dir" && mkdir -p "$dir"
	cd "$dir"
	go mod init berth.local/wrapper >/dev/null 2>&1
	[ $# -eq 0 ] && return 0
	{
		printf '//go:build tools\n\npackage tools\n\nimport (\n'
		printf '\t_ "%s"\n' "$@"
		printf ')\n'
	} >tools.go
}

build_kubernetes() {
	local out; out=$(cache_dir kubernetes "$K8S_VERSION")
	[ -f "$out/.done" ] && return 0
	log "building Kubernetes $K8S_VERSION (10 to 20 minutes on 2 cores)"
	local w="$BERTH_CACHE/src/kubernetes-$K8S_VERSION"
	local pkgs=(k8s.io/kubernetes/cmd/{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy,kubectl})
	(
		wrapper "$w" "${pkgs[@]}"
		local src; src=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
		local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
		local staging="v0.${K8S_VERSION#v1.}"
		go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
		# Each staging module is listed as v0.0.0 in kubernetes' go.mod; point it at its release.
		for m in $(sed -n 's/^\s*\(k8s.io\/[a-z0-9-]*\) v0.0.0$/\1/p' "$src/go.mod"); do
			go mod edit -replace="$m=$m@$staging"
		done
		go mod tidy -e >/dev/null 2>&1 || true
		go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
		go mod tidy >/dev/null
		local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
		local ld=""
		for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
			ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
			ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$date -X $p.gitCommit=berth-$K8S_VERSION"
		done
		mkdir -p "$out/bin"
		CGO_ENABLED=0 go build -trimpath -ldflags "-s -w$ld" -o "$out/bin/" "${pkgs[@]}"
	)
	touch "$out/.done"
}

build_etcd() {
	local out; out=$(cache_dir etcd "$ETCD_VERSION")
	[ -f "$out/.done" ] && return 0
	log "building etcd $ETCD_VERSION"
	local w="$BERTH_CACHE/src/etcd-$ETCD_VERSION"
	(
		wrapper "$w"
		cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
		go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1
		go mod tidy >/dev/null
		mkdir -p "$out/bin"
		CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/bin/etcd" .
	)
	touch "$out/.done"
}

build_containerd() {
	local out; out=$(cache_dir containerd "$CONTAINERD_VERSION")
	[ -f "$out/.done" ] && return 0
	log "building containerd $CONTAINERD_VERSION"
	local w="$BERTH_CACHE/src/containerd-$CONTAINERD_VERSION"
	local pkgs=(github.com/containerd/containerd/v2/cmd/{containerd,containerd-shim-runc-v2,ctr})
	(
		wrapper "$w" "${pkgs[@]}"
		go get "github.com/containerd/containerd/v2@$CONTAINERD_VERSION" >/dev/null 2>&1
		local src; src=$(go list -m -f '{{.Dir}}' "github.com/containerd/containerd/v2")
		# containerd's own replace directives apply only in its module; copy them.
		grep -E '^replace|^\s+[a-z].* => ' "$src/go.mod" | grep -v '^replace ($' | sed 's/^replace //' | while read -r line; do
			case "$line" in *"=>"*) go mod edit -replace="$(echo "$line" | sed 's/ => /=/; s/ /@/g')" ;; esac
		done || true
		go mod tidy >/dev/null
		mkdir -p "$out/bin"
		local ld="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
		CGO_ENABLED=0 go build -trimpath -tags "no_btrfs no_zfs no_devmapper no_aufs" -ldflags "$ld" -o "$out/bin/" "${pkgs[@]}"
	)
	touch "$out/.done"
}

build_runc() {
	local out; out=$(cache_dir runc "$RUNC_VERSION")
	[ -f "$out/.done" ] && return 0
	log "building runc $RUNC_VERSION"
	mkdir -p "$out/bin"
	CGO_ENABLED=1 GOBIN="$out/bin" go install -tags seccomp \
		-ldflags "-X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"
	touch "$out/.done"
}

build_coredns() {
	local out; out=$(cache_dir coredns "$COREDNS_VERSION")
	[ -f "$out/.done" ] && return 0
	log "building CoreDNS $COREDNS_VERSION"
	mkdir -p "$out/bin"
	CGO_ENABLED=0 GOBIN="$out/bin" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
	touch "$out/.done"
}

build_cni_plugins() {
	local out; out=$(cache_dir cni-plugins "$CNI_PLUGINS_VERSION")
	# macvlan since 2026-11-27 (cni/ipam's underlay test): a cache from before lacks it.
	[ -f "$out/.done" ] && [ -x "$out/bin/macvlan" ] && return 0
	log "building CNI plugins $CNI_PLUGINS_VERSION"
	mkdir -p "$out/bin"
	local m=github.com/containernetworking/plugins/plugins
	CGO_ENABLED=0 GOBIN="$out/bin" go install -trimpath -ldflags "-s -w" \
		"$m/main/bridge@$CNI_PLUGINS_VERSION" "$m/main/loopback@$CNI_PLUGINS_VERSION" \
		"$m/main/macvlan@$CNI_PLUGINS_VERSION" \
		"$m/ipam/host-local@$CNI_PLUGINS_VERSION" "$m/meta/portmap@$CNI_PLUGINS_VERSION"
	touch "$out/.done"
}

all=(etcd kubernetes containerd runc coredns cni_plugins)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
for t in "${targets[@]}"; do
	"build_${t//-/_}"
done
log "binaries ready in $BERTH_CACHE"
