package agent

import (
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestRegisterMetrics: the process and Go collectors controller-runtime
// registered already are kept, and a second Run in the same process
// registers again without error.
func TestRegisterMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsAll)))
	for range 2 {
		if err := registerMetrics(reg); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP berth_build_info Always 1; the labels say which build of Berth is running.
# TYPE berth_build_info gauge
berth_build_info{commit="dev",goversion="` + runtime.Version() + `",version="dev"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "berth_build_info"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "go_goroutines"); err != nil || n != 1 {
		t.Errorf("go_goroutines series = %d, %v; want 1", n, err)
	}

	bad := prometheus.NewRegistry()
	bad.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_build_info", Help: "x"}))
	if err := registerMetrics(bad); err == nil || !strings.HasPrefix(err.Error(), "register metrics: ") {
		t.Errorf("with a conflicting berth_build_info: err = %v, want a register metrics error", err)
	}
}
