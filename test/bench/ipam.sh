#!/usr/bin/env bash
# ADD then DEL latency and throughput of berth-ipam vs host-local vs
# Whereabouts v0.9.2, through the plugin binaries, against one real
# kube-apiserver + etcd (the envtest binaries the local-cluster build caches).
#   test/bench/ipam.sh [ipambench flags, e.g. -adds 128 -concurrency 1,16,64 -claims 20000]
# -repeat N runs each plugin N times, interleaved, and summarizes each one's
# ADD and DEL figures over host-local's of the same repetition (median and
# range), and the p99 of all its calls pooled over host-local's.
# berth-ipam-prepared rounds also count ADD/s until every container ID is
# recorded on its claim (a list, then a watch if needed, after the round),
# and start their DELs only then. Then each phase's CPU time per call by
# process (until its last write is committed) and the calls/s the machine's
# CPUs allow at that cost.
# Diagnostics: -floor N (serial IPClaim writes through a plain client),
# -split-cpus (kube-apiserver and etcd on the last CPU, the rest on the others),
# -cpuprofile FILE (the agent process: berth-agent's IPAM server),
# -apiserver-cpuprofile FILE, -agent-qps 0 (client-go's default limit).
# Builds: berth-ipam (this checkout), Whereabouts from the Go module proxy
# into $BERTH_CACHE/whereabouts-v0.9.2 (once, ~1 min); host-local is the CNI
# reference plugins' build in $BERTH_CACHE.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
: "${BERTH_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/berth}"
source test/cluster/versions.sh
WHEREABOUTS_VERSION=v0.9.2
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT

make -s envtest-assets
# As `make build` builds it (stripped), so the exec measured is the one shipped.
CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$bin/berth-ipam" ./cni/ipam/cmd/berth-ipam
test -x "$BERTH_CACHE/cni-plugins-$CNI_PLUGINS_VERSION/bin/host-local" || test/cluster/build.sh cni_plugins
cp "$BERTH_CACHE/cni-plugins-$CNI_PLUGINS_VERSION/bin/host-local" "$bin/"

wa=$BERTH_CACHE/whereabouts-$WHEREABOUTS_VERSION
if [ ! -x "$wa/bin/whereabouts" ]; then
	# A wrapper module: Whereabouts' own go.mod replaces gogo/protobuf.
	src=$BERTH_CACHE/src/whereabouts-$WHEREABOUTS_VERSION
	mkdir -p "$src" "$wa/bin"
	printf 'module berth.local/whereabouts-build\n\ngo 1.26\n\nrequire github.com/k8snetworkplumbingwg/whereabouts %s\n\nreplace github.com/gogo/protobuf => github.com/gogo/protobuf v1.3.2\n' "$WHEREABOUTS_VERSION" > "$src/go.mod"
	printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/k8snetworkplumbingwg/whereabouts/cmd"\n' > "$src/tools.go"
	(cd "$src" && GOFLAGS=-mod=mod go mod tidy && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -o "$wa/bin/whereabouts" github.com/k8snetworkplumbingwg/whereabouts/cmd)
fi
cp "$wa/bin/whereabouts" "$bin/"
wa_crds=$(cd "$BERTH_CACHE/src/whereabouts-$WHEREABOUTS_VERSION" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' github.com/k8snetworkplumbingwg/whereabouts)/doc/crds

KUBEBUILDER_ASSETS=$(make -s print-envtest-assets) go run ./test/bench/ipambench \
	-bin "$bin" -crds deploy/base/crds -whereabouts-crds "$wa_crds" "$@"
