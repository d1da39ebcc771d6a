package parts_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-io/berth/internal/parts"
	"github.com/berth-io/berth/test/poll"
	"github.com/berth-io/berth/test/promtest"
	"github.com/berth-io/berth/test/runnable"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newPart(t *testing.T, reg *prometheus.Registry, name string, run func(context.Context) error) *parts.Part {
	t.Helper()
	m, err := parts.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := parts.New(parts.Config{Name: name, Run: run, Metrics: m, MinBackoff: 10 * time.Millisecond, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func value(t *testing.T, reg *prometheus.Registry, name, part string) float64 {
	v, _ := promtest.Value(t, reg, name, map[string]string{"part": part})
	return v
}

// TestPart_Start_panic: a part that panics is recovered, counted, red
// while it waits, and started again; the process goes on.
func TestPart_Start_panic(t *testing.T) {
	reg := prometheus.NewRegistry()
	var runs atomic.Int32
	release := make(chan struct{})
	p := newPart(t, reg, "flaky", func(ctx context.Context) error {
		if runs.Add(1) <= 2 {
			panic("boom")
		}
		close(release)
		<-ctx.Done()
		return nil
	})
	runnable.Start(t, 5*time.Second, p.Start)
	<-release
	if got := value(t, reg, "berth_agent_part_panics_total", "flaky"); got != 2 {
		t.Errorf("panics counted %v, want 2", got)
	}
	poll.Until(t, 5*time.Second, "the part to be up again", func() bool {
		return p.Check(nil) == nil && value(t, reg, "berth_agent_part_up", "flaky") == 1
	})
}

// TestPart_Start_stops: a part that returns before the process stops
// turns its check red for good, and Start waits for the process.
func TestPart_Start_stops(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{name: "returns nil", want: "part quits stopped: stopped"},
		{name: "returns an error", err: errors.New("informer: no such kind"), want: "part quits stopped: informer: no such kind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			p := newPart(t, reg, "quits", func(context.Context) error { return tc.err })
			stop := runnable.Start(t, 5*time.Second, p.Start)
			poll.Until(t, 5*time.Second, "the check to fail", func() bool { return p.Check(nil) != nil })
			if err := p.Check(nil); err.Error() != tc.want {
				t.Errorf("Check() = %q, want %q", err, tc.want)
			}
			if got := value(t, reg, "berth_agent_part_up", "quits"); got != 0 {
				t.Errorf("test_part_up = %v, want 0", got)
			}
			stop()
		})
	}
}

// TestMetrics_Recover: a panic in a goroutine of a part becomes its
// error, counted for the part.
func TestMetrics_Recover(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := parts.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	work := func() (err error) {
		defer m.Recover("worker", quiet, &err)
		var pods []string
		_ = pods[len(pods)] // an index out of range panics
		return nil
	}
	if err := work(); err == nil || !strings.HasPrefix(err.Error(), "panic: runtime error: index out of range") {
		t.Errorf("work() = %v, want the panic as an error", err)
	}
	if got := value(t, reg, "berth_agent_part_panics_total", "worker"); got != 1 {
		t.Errorf("panics counted %v, want 1", got)
	}
}
