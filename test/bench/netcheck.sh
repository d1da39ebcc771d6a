#!/usr/bin/env bash
# Measures berth-netcheck (cni/netcheck) with the real binaries, driven the
# way a runtime drives them (libcni: CNI_* variables, config on stdin), in
# network namespaces the benchmarks make and remove (root):
#   - extra ADD latency on a healthy network: bridge + host-local with and
#     without berth-netcheck (default settings), alternating, IPv4 and
#     dual-stack; median and p99;
#   - detection rate: an address already held on the bridge (IPv4, IPv6) and
#     a gateway that does not exist (IPv4, IPv6).
#   test/bench/netcheck.sh [runs]      (default 200 of each)
# The CNI reference plugins come from the local cluster's cache
# (test/cluster/build.sh cni_plugins) or BERTH_CNI_BIN.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-200}
[ "$(id -u)" = 0 ] || { echo "run as root: the benchmarks make network namespaces" >&2; exit 1; }
go test -count=1 -run '^$' -bench 'BenchmarkChainADD|BenchmarkDetect' -benchtime "${runs}x" -timeout 60m ./cni/netcheck/ |
	awk '
	/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		for (i = 3; i < NF; i += 2) v[name, $(i + 1)] = $i
		names[++n] = name
		next
	}
	{ print }
	END {
		for (k = 1; k <= n; k++) {
			nm = names[k]
			if (nm ~ /ChainADD/) {
				printf "%-32s ADD without: p50 %6.1f ms  p99 %6.1f ms | with: p50 %6.1f ms  p99 %6.1f ms | extra: p50 %6.1f ms  p99 %6.1f ms | berth-netcheck exec: p50 %6.1f ms  p99 %6.1f ms\n",
					nm, v[nm, "without-p50-ms"], v[nm, "without-p99-ms"], v[nm, "with-p50-ms"], v[nm, "with-p99-ms"],
					v[nm, "extra-p50-ms"], v[nm, "extra-p99-ms"], v[nm, "netcheck-p50-ms"], v[nm, "netcheck-p99-ms"]
			} else {
				printf "%-32s detected %5.1f%% of %d runs\n", nm, v[nm, "detected-%"], v[nm, "runs"]
			}
		}
	}'
