#!/usr/bin/env bash
# Heap of Berth's informer cache for a cluster's pods, ReplicaSets and
# IPClaims, before and with internal/cachetrim, against one real
# kube-apiserver + etcd (the envtest binaries the local-cluster build caches).
#   test/bench/cachemem.sh [-pods 10000] [-pods-per-rs 3] [-rounds 21]
# It also times listing one pool's claims (all of them) with deep copies
# against ippoolstatus.Claims' shallow ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
make -s envtest-assets
KUBEBUILDER_ASSETS=$(make -s print-envtest-assets) exec go run ./test/bench/cachemem "$@"
