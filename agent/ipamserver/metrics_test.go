package ipamserver

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestNewMetrics_twice: a second Server in the same process (same
// registry) continues the first one's series.
func TestNewMetrics_twice(t *testing.T) {
	reg := prometheus.NewRegistry()
	first, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	first.reclaimed.WithLabelValues("p").Inc()
	first.allocation.WithLabelValues("ok").Observe(0.1)
	second, err := newMetrics(reg)
	if err != nil {
		t.Fatalf("second registration: %v", err)
	}
	if second.reclaimed != first.reclaimed || second.reservations != first.reservations ||
		second.allocation != first.allocation || second.release != first.release || second.recordsPending != first.recordsPending {
		t.Fatal("the second Server got collectors of its own: its series would not be exported")
	}
	second.reclaimed.WithLabelValues("p").Inc()
	if got := testutil.ToFloat64(second.reclaimed.WithLabelValues("p")); got != 2 {
		t.Errorf("reclaimed{pool=p} = %v, want 2", got)
	}
}

// TestNewMetrics_conflict: a collector of another kind under one of the
// server's names is an error, not silently ignored.
func TestNewMetrics_conflict(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_agent_ipam_reservations_reclaimed_total", Help: "x"}))
	if _, err := newMetrics(reg); err == nil || !strings.HasPrefix(err.Error(), "register metrics: ") {
		t.Fatalf("err = %v, want a register metrics error", err)
	}
}

// TestPendingWork_gauge: the pending recordings gauge follows the
// containers waiting for their container ID update, through start, the
// DEL's cancel and the end of the recording, including a canceled
// recording that ends after another container of the same pod started.
func TestPendingWork_gauge(t *testing.T) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "pending", Help: "pending"})
	p := newPendingWork(1, g, "")
	expect := func(want float64) {
		t.Helper()
		if got := testutil.ToFloat64(g); got != want {
			t.Fatalf("gauge = %v, want %v", got, want)
		}
	}
	expect(0)
	doneA := p.start(&pendingEntry{pod: "ns/a", uid: "ua"}, "a")
	doneB := p.start(&pendingEntry{pod: "ns/b", uid: "ub"}, "b")
	expect(2)
	if p.cancel("a") == nil {
		t.Fatal("cancel found nothing pending for a")
	}
	expect(1)
	doneA() // the canceled recording's goroutine ends
	expect(1)
	if p.cancel("a") != nil {
		t.Fatal("a canceled twice")
	}
	doneA2 := p.start(&pendingEntry{pod: "ns/b", uid: "ub"}, "b2")
	expect(2)
	doneB()
	doneA2()
	expect(0)
}
