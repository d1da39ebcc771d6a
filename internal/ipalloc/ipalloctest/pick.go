package ipalloctest

import (
	"cmp"
	"maps"
	"math/rand/v2"
	"slices"
)

// Pick returns a random value of m that ok accepts (false if none does),
// for property tests choosing what to act on next. It draws from the
// values in key order, so that one goroutine's choices follow from its
// seed and the model's state.
func Pick[K cmp.Ordered, V any](r *rand.Rand, m map[K]V, ok func(V) bool) (V, bool) {
	var candidates []V
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if ok(m[k]) {
			candidates = append(candidates, m[k])
		}
	}
	if len(candidates) == 0 {
		var zero V
		return zero, false
	}
	return candidates[r.IntN(len(candidates))], true
}
