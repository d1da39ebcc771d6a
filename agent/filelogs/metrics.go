package filelogs

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-io/berth/internal/promreg"
)

// Results of CreateContainer, the result label of
// berth_agent_filelogs_containers_total.
const (
	resultMounted  = "mounted"  // directories made, mounts returned
	resultRejected = "rejected" // a bad KUBERNETES_FILELOGS value; creation failed
	resultFailed   = "failed"   // the host directories could not be made; creation failed
)

type metrics struct {
	containers   *prometheus.CounterVec
	unmounted    prometheus.Gauge
	podBytes     *prometheus.GaugeVec
	removedFiles prometheus.Counter
	removedPods  prometheus.Counter
	removedBytes prometheus.Counter
	errors       prometheus.Counter
	passSeconds  prometheus.Gauge
	lastPass     prometheus.Gauge
}

// newMetrics makes the metrics and registers them with reg, if any; when
// reg already holds them (a second Manager in one process), the registered
// ones are used.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		containers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_agent_filelogs_containers_total",
			Help: "CreateContainer requests with KUBERNETES_FILELOGS (kubelet retries count again), by result: mounted, rejected (bad value), failed (host directories).",
		}, []string{"result"}),
		unmounted: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_agent_filelogs_unmounted_containers",
			Help: "Running containers that ask for file logs but lack their mounts, as found at the last connect to the runtime.",
		}),
		podBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_agent_filelogs_pod_bytes",
			Help: "Disk space used by a pod's file-log directory (allocated blocks), at the last retention pass.",
		}, []string{"namespace", "pod", "uid"}),
		removedFiles: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_agent_filelogs_removed_files_total",
			Help: "Files and empty directories in live pods' log directories removed for being older than the retention.",
		}),
		removedPods: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_agent_filelogs_removed_pods_total",
			Help: "Pod log directories removed once their pod had been gone for the retention.",
		}),
		removedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_agent_filelogs_removed_bytes_total",
			Help: "Disk space freed by retention (allocated blocks of removed files).",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_agent_filelogs_retention_errors_total",
			Help: "Errors met by retention passes (a file that could not be read or removed, a mount point, a tree too deep).",
		}),
		passSeconds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_agent_filelogs_retention_pass_seconds",
			Help: "How long the last retention pass took.",
		}),
		lastPass: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_agent_filelogs_retention_last_pass_timestamp_seconds",
			Help: "When the last retention pass ended, Unix time.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.containers, err = promreg.Register(reg, m.containers); err != nil {
		return nil, err
	}
	if m.podBytes, err = promreg.Register(reg, m.podBytes); err != nil {
		return nil, err
	}
	for _, g := range []*prometheus.Gauge{&m.unmounted, &m.passSeconds, &m.lastPass} {
		if *g, err = promreg.Register(reg, *g); err != nil {
			return nil, err
		}
	}
	for _, c := range []*prometheus.Counter{&m.removedFiles, &m.removedPods, &m.removedBytes, &m.errors} {
		if *c, err = promreg.Register(reg, *c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
