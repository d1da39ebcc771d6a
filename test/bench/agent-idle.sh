#!/usr/bin/env bash
# Measures berth-agent at idle on the local cluster: resident memory and CPU
# over a window (default 60 s), from /proc of the agent's process, plus the
# same for containerd as a baseline from the same window.
#   test/bench/agent-idle.sh [seconds]
set -euo pipefail
window=${1:-60}
pid=$(pgrep -x berth-agent | head -1) || { echo "no berth-agent process: run make up" >&2; exit 1; }
base=$(cat "$(dirname "$0")/../../_output/cluster/pids/containerd.pid")
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
a0=$(ticks "$pid"); b0=$(ticks "$base")
sleep "$window"
a1=$(ticks "$pid"); b1=$(ticks "$base")
awk -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v hz="$hz" -v w="$window" -v ar="$(rss_kib "$pid")" -v br="$(rss_kib "$base")" 'BEGIN {
	printf "berth-agent: RSS %.1f MiB, CPU %.3f%% of one core over %ds (%d ticks)\n", ar/1024, 100*a/hz/w, w, a
	printf "containerd:  RSS %.1f MiB, CPU %.3f%% of one core over %ds (%d ticks)\n", br/1024, 100*b/hz/w, w, b
}'
