# Shared by the harness scripts: paths, settings and small helpers.
# shellcheck shell=bash
BERTH_CACHE=${BERTH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/berth}
export BERTH_CACHE

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# cache_dir NAME VERSION: prints the cache directory of one built component.
cache_dir() { printf '%s/%s-%s' "$BERTH_CACHE" "$1" "$2"; }

# wait_for SECONDS DESCRIPTION COMMAND...: runs COMMAND every half second
# until it succeeds; fails with DESCRIPTION after SECONDS.
wait_for() {
	local secs=$1 what=$2; shift 2
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -ge $deadline ] && { log "timed out after ${secs}s waiting for $what"; return 1; }
		sleep 0.5
	done
}
