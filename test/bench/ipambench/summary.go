package main

import (
	"fmt"
	"io"
	"slices"
	"time"
)

// baselinePlugin is the plugin every other one is compared with.
const baselinePlugin = "host-local"

// The goal for each plugin against the baseline of the same
// repetition: at least half its throughput, a p99 within 1.5x (read for
// ADD, and for DEL too).
const (
	goalRate = 0.5
	goalP99  = 1.5
)

// result is one round: a plugin at a concurrency, in one repetition.
type result struct {
	plugin    string
	conc, rep int
	add, del  stats
}

// phaseOf picks a phase's figures from a result.
type phaseOf func(result) stats

func addPhase(r result) stats { return r.add }
func delPhase(r result) stats { return r.del }

// ratios are one plugin's figures over the baseline's, one per repetition.
type ratios struct {
	rate, p99 []float64
	within    int // repetitions that met both goals
	// pooled is the p99 of all the plugin's calls in these repetitions over
	// the p99 of all the baseline's: a p99 of 128 calls is their second
	// slowest, and moves by itself from one repetition to the next.
	pooled float64
}

// pooledP99 is the p99 of every call of the given rounds together.
func pooledP99(sts []stats) time.Duration {
	var all []time.Duration
	for _, st := range sts {
		all = append(all, st.lat...)
	}
	slices.Sort(all)
	return quantile(all, 0.99)
}

// pooledRatio is pooledP99(a) over pooledP99(b); 0 if either has no calls.
func pooledRatio(a, b []stats) float64 {
	pa, pb := pooledP99(a), pooledP99(b)
	if pa == 0 || pb == 0 {
		return 0
	}
	return float64(pa) / float64(pb)
}

// baselineOf is the baseline's round at conc in repetition rep.
func baselineOf(rs []result, conc, rep int) (result, bool) {
	for _, r := range rs {
		if r.plugin == baselinePlugin && r.conc == conc && r.rep == rep {
			return r, true
		}
	}
	return result{}, false
}

// compare pairs each round of plugin at conc with the baseline's round of
// the same repetition, in phase.
func compare(rs []result, plugin string, conc int, phase phaseOf) ratios {
	var out ratios
	var mine, theirs []stats
	for _, r := range rs {
		if r.plugin != plugin || r.conc != conc {
			continue
		}
		h, ok := baselineOf(rs, conc, r.rep)
		b := phase(h)
		if !ok || b.rate == 0 || b.p99 == 0 {
			continue
		}
		st := phase(r)
		mine, theirs = append(mine, st), append(theirs, b)
		rate, p99 := st.rate/b.rate, float64(st.p99)/float64(b.p99)
		out.rate, out.p99 = append(out.rate, rate), append(out.p99, p99)
		if rate >= goalRate && p99 <= goalP99 {
			out.within++
		}
	}
	out.pooled = pooledRatio(mine, theirs)
	return out
}

// selfRatios is the baseline against itself: each repetition's p99 in
// phase over the next one's, the noise of a p99 of this many calls on this
// machine. A ratio beyond goalP99 either way counts as outside. pooled is
// the p99 of its even repetitions' calls over that of its odd ones'.
func selfRatios(rs []result, conc int, phase phaseOf) (p99 []float64, outside int, pooled float64) {
	var last time.Duration
	var halves [2][]stats
	for _, r := range rs {
		if r.plugin != baselinePlugin || r.conc != conc {
			continue
		}
		st := phase(r)
		halves[r.rep%2] = append(halves[r.rep%2], st)
		if last > 0 && st.p99 > 0 {
			q := float64(last) / float64(st.p99)
			p99 = append(p99, q)
			if q > goalP99 || q < 1/goalP99 {
				outside++
			}
		}
		last = st.p99
	}
	return p99, outside, pooledRatio(halves[0], halves[1])
}

// median of xs (the mean of the middle two for an even count); 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// spread is "median (min-max)" of xs.
func spread(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx (%.2f-%.2fx)", median(xs), slices.Min(xs), slices.Max(xs))
}

// ratio is "1.23x", or "-" for 0 (not measured).
func ratio(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", x)
}

// writeSummary prints, for runs repeated more than once, each plugin's
// ADD and DEL figures over the baseline's of the same repetition, and the
// baseline against itself.
func writeSummary(w io.Writer, rs []result, plugins []string, concs []int, repeat int) {
	if repeat < 2 || !slices.Contains(plugins, baselinePlugin) {
		return
	}
	for _, ph := range []struct {
		name string
		of   phaseOf
	}{{"ADD", addPhase}, {"DEL", delPhase}} {
		fmt.Fprintf(w, "\n%s over %s's %s in the same repetition (%d repetitions, plugins interleaved); goal: throughput >= %.1fx, p99 <= %.1fx.\n",
			ph.name, baselinePlugin, ph.name, repeat, goalRate, goalP99)
		fmt.Fprintf(w, "%s against itself: each repetition's p99 over the next one's, outside 1/%.1f-%.1fx counted.\n", baselinePlugin, goalP99, goalP99)
		fmt.Fprintf(w, "Pooled p99: of all the repetitions' calls together, over %s's (against itself: its even repetitions over its odd ones).\n\n", baselinePlugin)
		fmt.Fprintf(w, "| plugin | concurrency | runs | %s/s ratio: median (range) | %s p99 ratio: median (range) | runs meeting both goals | pooled p99 ratio |\n", ph.name, ph.name)
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
		for _, n := range concs {
			if self, outside, pooled := selfRatios(rs, n, ph.of); len(self) > 0 {
				fmt.Fprintf(w, "| %s vs itself | %d | %d | - | %s | %d of %d within | %s |\n", baselinePlugin, n, len(self), spread(self), len(self)-outside, len(self), ratio(pooled))
			}
			for _, p := range plugins {
				if p == baselinePlugin {
					continue
				}
				if c := compare(rs, p, n, ph.of); len(c.p99) > 0 {
					fmt.Fprintf(w, "| %s | %d | %d | %s | %s | %d of %d | %s |\n", p, n, len(c.p99), spread(c.rate), spread(c.p99), c.within, len(c.p99), ratio(c.pooled))
				}
			}
		}
	}
}
