#!/usr/bin/env bash
# Runs every Go fuzz target of the module for FUZZTIME each (make fuzz); the
# last line of its output is one summary line.
# A target fails when go test -fuzz writes a failing input to
# testdata/fuzz/<target>/ (then commit it: it becomes a regression test) or
# fails any other way, except for one known toolchain race: Go 1.26's fuzz
# coordinator can report "context deadline exceeded" as the -fuzztime
# deadline passes, with no failing input (golang/go#75804, fixed in Go
# 1.27). That is reported as a flake and does not fail the run.
# A package whose tests do not build fails the run too (its targets would
# otherwise be skipped unseen), and so does a module with no target at all.
set -uo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-30s}
start=$(date +%s)
mod=$(go list -m)
pass=0 fail=0 flake=0
failed=()

# Only packages with a Fuzz function in a test file can have a target;
# listing just those saves building every other package's tests.
pkgs=()
while read -r pkg dir; do
	if grep -qs '^func Fuzz' "$dir"/*_test.go; then
		pkgs+=("$pkg")
	fi
done < <(go list -f '{{.ImportPath}} {{.Dir}}' ./...)

# Each package's instrumented test binary is built once (go test -c -fuzz)
# and run once per target in the package's directory, with the fuzz cache
# go test -fuzz uses: the same as go test -fuzz, without linking the binary
# again for every target.
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
cache=$(go env GOCACHE)/fuzz
for pkg in "${pkgs[@]}"; do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	test=$bin/$(tr / _ <<<"$pkg").test
	if ! go test -c -fuzz=. -o "$test" "$pkg" || ! list=$("$test" -test.list '^Fuzz'); then
		echo "fuzz: $pkg: its tests do not build or list"
		fail=$((fail + 1))
		failed+=("${pkg#"$mod"/} (does not build)")
		continue
	fi
	for f in $(grep '^Fuzz' <<<"$list"); do
		echo "== $pkg $f"
		corpus="$dir/testdata/fuzz/$f"
		before=$(find "$corpus" -type f 2>/dev/null | sort)
		out=$(mktemp)
		(cd "$dir" && "$test" -test.run='^$' -test.fuzz="^$f\$" -test.fuzztime="$fuzztime" \
			-test.fuzzcachedir="$cache/$pkg" -test.paniconexit0 -test.timeout=10m) 2>&1 | tee "$out"
		rc=${PIPESTATUS[0]}
		after=$(find "$corpus" -type f 2>/dev/null | sort)
		if [ "$rc" -eq 0 ]; then
			pass=$((pass + 1))
		elif [ "$before" = "$after" ] && grep -q '^    context deadline exceeded$' "$out" && ! grep -q 'Failing input written' "$out"; then
			echo "fuzz: $f: the fuzzing deadline race of Go 1.26 (golang/go#75804), no failing input: counted as a flake"
			flake=$((flake + 1))
		else
			fail=$((fail + 1))
			failed+=("${pkg#"$mod"/} $f")
		fi
		rm -f "$out"
	done
done

if [ $((pass + fail + flake)) -eq 0 ]; then
	fail=1
	failed+=("no fuzz target found")
fi
summary="make fuzz: $pass passed, $fail failed, $flake flaked (golang/go#75804), $fuzztime each, $(($(date +%s) - start))s"
if [ "$fail" -gt 0 ]; then
	summary+="; failed: $(printf '%s, ' "${failed[@]}")"
	echo "${summary%, }"
	exit 1
fi
echo "$summary"
