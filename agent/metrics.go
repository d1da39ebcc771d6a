package agent

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/berth-io/berth/agent/version"
)

// registerMetrics adds berth_build_info and the process_* and go_*
// collectors to reg. controller-runtime registers the same process and Go
// collectors (same options) when its controller package is linked in; a
// collector that is already there is kept.
func registerMetrics(reg prometheus.Registerer) error {
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "berth_build_info",
		Help: "Always 1; the labels say which build of Berth is running.",
		ConstLabels: prometheus.Labels{
			"version":   version.Version,
			"commit":    version.Commit,
			"goversion": runtime.Version(),
		},
	})
	buildInfo.Set(1)
	for _, c := range []prometheus.Collector{
		buildInfo,
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsAll)),
	} {
		err := reg.Register(c)
		if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); err != nil && !ok {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}
