#!/usr/bin/env bash
# Heap of Berth's informer cache for a cluster's pods, ReplicaSets and
# IPClaims, before and with internal/cachetrim, against one real
# kube-apiserver + etcd (the envtest binaries the local-cluster build caches).
#   test/bench/cachemem.sh [-pods 10000] [-pods-per-rs 3] [-rounds 21] [-watchers 16] [-events 2000]
# It also times listing one pool's claims (all of them) with deep copies
# against ippoolstatus.Claims' shallow ones, and the CPU time kube-apiserver
# and the caches spend per pod update for each cache watching (-watchers
# caches as berth-agent's, and as many whose pods are metadata only,
# against none).
set -euo pipefail
cd "$(dirname "$0")/../.."
make -s envtest-assets
KUBEBUILDER_ASSETS=$(make -s print-envtest-assets) exec go run ./test/bench/cachemem "$@"
