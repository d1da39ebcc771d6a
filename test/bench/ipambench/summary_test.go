package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestCompare(t *testing.T) {
	ms := time.Millisecond
	rs := []result{
		{plugin: "host-local", conc: 1, rep: 0, add: stats{rate: 200, p99: 10 * ms}, del: stats{rate: 300, p99: 10 * ms}},
		{plugin: "berth", conc: 1, rep: 0, add: stats{rate: 100, p99: 15 * ms}, del: stats{rate: 100, p99: 20 * ms}}, // ADD at both limits: meets
		{plugin: "host-local", conc: 1, rep: 1, add: stats{rate: 100, p99: 20 * ms}},
		{plugin: "berth", conc: 1, rep: 1, add: stats{rate: 40, p99: 10 * ms}}, // too slow
		{plugin: "host-local", conc: 1, rep: 2, add: stats{rate: 100, p99: 8 * ms}},
		{plugin: "berth", conc: 1, rep: 2, add: stats{rate: 100, p99: 16 * ms}},  // p99 2x
		{plugin: "berth", conc: 16, rep: 0, add: stats{rate: 100, p99: 16 * ms}}, // no baseline at 16
	}
	c := compare(rs, "berth", 1, addPhase)
	if want := []float64{0.5, 0.4, 1}; !equal(c.rate, want) {
		t.Errorf("rate ratios %v, want %v", c.rate, want)
	}
	if want := []float64{1.5, 0.5, 2}; !equal(c.p99, want) {
		t.Errorf("p99 ratios %v, want %v", c.p99, want)
	}
	if c.within != 1 {
		t.Errorf("within %d, want 1", c.within)
	}
	if c := compare(rs, "berth", 16, addPhase); len(c.p99) != 0 {
		t.Errorf("compared without a baseline: %+v", c)
	}
	self, outside, _ := selfRatios(rs, 1, addPhase)
	if want := []float64{0.5, 2.5}; !equal(self, want) || outside != 2 {
		t.Errorf("self ratios %v outside %d, want %v and 2", self, outside, want)
	}

	var out bytes.Buffer
	writeSummary(&out, rs, []string{"host-local", "berth"}, []int{1, 16}, 3)
	for _, want := range []string{
		"| host-local vs itself | 1 | 2 | - | 1.50x (0.50-2.50x) | 0 of 2 within | - |", // no calls recorded
		"| berth | 1 | 3 | 0.50x (0.40-1.00x) | 1.50x (0.50-2.00x) | 1 of 3 | - |",
		"| DEL/s ratio: median (range) | DEL p99 ratio: median (range) |",
		"| berth | 1 | 1 | 0.33x (0.33-0.33x) | 2.00x (2.00-2.00x) | 0 of 1 | - |", // the others have no DEL figures
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	writeSummary(&out, rs, []string{"host-local", "berth"}, []int{1}, 1)
	if out.Len() != 0 {
		t.Errorf("summary of a single repetition: %q", out.String())
	}
}

// TestPooled pools the calls of all repetitions: one slow call in each of
// two rounds is 2% of their 100 calls, so the pooled p99 is that slow call,
// while a round's own p99 of 50 calls is its slowest.
func TestPooled(t *testing.T) {
	ms := time.Millisecond
	round := func(fast, slow time.Duration, nSlow int) stats {
		lat := make([]time.Duration, 50)
		for i := range lat {
			lat[i] = fast
			if i >= 50-nSlow {
				lat[i] = slow
			}
		}
		return stats{rate: 100, p99: quantile(lat, 0.99), lat: lat}
	}
	rs := []result{
		{plugin: "host-local", conc: 1, rep: 0, add: round(5*ms, 10*ms, 1)},
		{plugin: "berth", conc: 1, rep: 0, add: round(6*ms, 40*ms, 1)},
		{plugin: "host-local", conc: 1, rep: 1, add: round(5*ms, 20*ms, 1)},
		{plugin: "berth", conc: 1, rep: 1, add: round(6*ms, 9*ms, 2)},
	}
	// Pooled: host-local's 100 calls hold 10 and 20 ms at the top, p99 (the
	// 99th of 100) is 10 ms; berth's hold 9, 9 and 40 ms: 9 ms.
	c := compare(rs, "berth", 1, addPhase)
	if want := 0.9; c.pooled < want-1e-9 || c.pooled > want+1e-9 {
		t.Errorf("pooled p99 ratio %v, want %v", c.pooled, want)
	}
	if want := []float64{4, 0.45}; !equal(c.p99, want) {
		t.Errorf("per-repetition p99 ratios %v, want %v", c.p99, want)
	}
	if _, _, pooled := selfRatios(rs, 1, addPhase); pooled != 0.5 {
		t.Errorf("host-local's even over odd repetitions: %v, want 0.5", pooled)
	}
	if got := quantile(nil, 0.99); got != 0 {
		t.Errorf("quantile of nothing: %v", got)
	}
}

func equal(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if d := a[i] - b[i]; d > 1e-9 || d < -1e-9 {
			return false
		}
	}
	return true
}

func TestWriteBudget(t *testing.T) {
	ms := time.Millisecond
	rs := []result{{plugin: "berth", conc: 1,
		// 10 calls: the plugins used 40 ms; this process, the agent,
		// kube-apiserver and etcd 10, 20, 30 and 0 ms over the phase.
		add: stats{rate: 50, cpu: 40 * ms, procCPU: []time.Duration{10 * ms, 20 * ms, 30 * ms, 0}},
		// Committed after 200 ms: 50/s counted until then, not the 100/s answered.
		del: stats{rate: 100, committed: 200 * ms, cpu: 30 * ms, procCPU: []time.Duration{0, 0, 50 * ms, 20 * ms}},
	}}
	var out bytes.Buffer
	writeBudget(&out, rs, 10, 2)
	for _, want := range []string{
		"| berth | 1 | ADD | 4.0 ms | 1.0 ms | 2.0 ms | 3.0 ms | 0.0 ms | 10.0 ms | 200 | 50 |",
		"| berth | 1 | DEL | 3.0 ms | 0.0 ms | 0.0 ms | 5.0 ms | 2.0 ms | 10.0 ms | 200 | 50 |",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("budget table lacks %q:\n%s", want, out.String())
		}
	}
}
