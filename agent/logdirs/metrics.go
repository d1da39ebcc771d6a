package logdirs

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

// Kinds of unsafe entries, the kind label of
// berth_agent_filelogs_unsafe_entries_total: the first five are removed,
// the others defused.
const (
	kindSymlink     = "symlink"
	kindHardlink    = "hardlink"     // a regular file with more than one link
	kindDevice      = "device"       // a character or block device node
	kindFIFO        = "fifo"         // a named pipe
	kindSocket      = "socket"       // a unix socket
	kindSetID       = "setid"        // a set-user-ID or set-group-ID bit, stripped
	kindFutureMtime = "future_mtime" // an mtime in the future, set to now
)

// unsafeKinds lists the kinds in the order Events name them.
var unsafeKinds = []string{kindSymlink, kindHardlink, kindDevice, kindFIFO, kindSocket, kindSetID, kindFutureMtime}

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
	unsafe       *prometheus.CounterVec
	overLimit    *prometheus.CounterVec
	overLimitB   *prometheus.CounterVec
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
		unsafe: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_agent_filelogs_unsafe_entries_total",
			Help: "Entries below log directories that retention removed whatever their age (kind symlink, hardlink, device, fifo, socket) or defused (setid: set-user-ID or set-group-ID bit stripped; future_mtime: mtime in the future set to now).",
		}, []string{"kind"}),
		overLimit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_agent_filelogs_over_limit_total",
			Help: "Retention passes that found a container's log directories over its size limit.",
		}, []string{"namespace", "pod", "uid", "container"}),
		overLimitB: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_agent_filelogs_over_limit_removed_bytes_total",
			Help: "Disk space freed from a container's log directories (its oldest files) because they were over its size limit.",
		}, []string{"namespace", "pod", "uid", "container"}),
	}
	if reg == nil {
		m.initKinds()
		return m, nil
	}
	var err error
	if m.containers, err = promreg.Register(reg, m.containers); err != nil {
		return nil, err
	}
	if m.podBytes, err = promreg.Register(reg, m.podBytes); err != nil {
		return nil, err
	}
	for _, c := range []**prometheus.CounterVec{&m.unsafe, &m.overLimit, &m.overLimitB} {
		if *c, err = promreg.Register(reg, *c); err != nil {
			return nil, err
		}
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
	m.initKinds()
	return m, nil
}

// initKinds exports every kind of unsafe entry, at 0 until one is met.
func (m *metrics) initKinds() {
	for _, k := range unsafeKinds {
		m.unsafe.WithLabelValues(k)
	}
}
