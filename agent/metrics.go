package agent

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/berth-io/berth/internal/promreg"
	"github.com/berth-io/berth/internal/version"
)

// registerMetrics adds berth_build_info and the process_* and go_*
// collectors to reg. controller-runtime registers the same process and Go
// collectors (same options) when its controller package is linked in; a
// collector that is already there is kept.
func registerMetrics(reg prometheus.Registerer) error {
	buildInfo, err := promreg.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "berth_build_info",
		Help: "Always 1; the labels say which build of Berth is running.",
		ConstLabels: prometheus.Labels{
			"version":   version.Version,
			"commit":    version.Commit,
			"goversion": runtime.Version(),
		},
	}))
	if err != nil {
		return err
	}
	buildInfo.Set(1)
	for _, c := range []prometheus.Collector{
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsAll)),
	} {
		if _, err := promreg.Register(reg, c); err != nil {
			return err
		}
	}
	return nil
}
