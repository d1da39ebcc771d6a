package ipamserver

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-io/berth/internal/promreg"
)

type metrics struct {
	allocation   *prometheus.HistogramVec
	release      *prometheus.HistogramVec
	reservations *prometheus.CounterVec
	reclaimed    *prometheus.CounterVec
	prepared     *prometheus.CounterVec
	conflicts    *prometheus.CounterVec
	// recordsPending is the number of containers whose prepared claims
	// do not record them yet.
	recordsPending prometheus.Gauge
	// releasesPending is the number of DELs answered whose claims are not
	// released yet.
	releasesPending prometheus.Gauge
	// gc counts the claims garbage collection looked at, by source and
	// result; gcRuns the collections, by source and result.
	gc     *prometheus.CounterVec
	gcRuns *prometheus.CounterVec
	// quarantined is the number of DEL records in quarantine.
	quarantined prometheus.Gauge
}

var durationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// newMetrics makes the server's metrics and registers them with reg. When
// reg already holds them (a second Server in the same process), the
// registered ones are used, so the series continue. The pools' gauges
// are berth-controller's (berth_controller_ippool_addresses), exported once for the
// cluster rather than by every agent.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		allocation: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_agent_ipam_allocation_duration_seconds",
			Help:    "Time to serve a CNI ADD, by result: ok, retry (the runtime should try again: a terminating pod still holds the address), error.",
			Buckets: durationBuckets,
		}, []string{"result"}),
		release: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_agent_ipam_release_duration_seconds",
			Help:    "Time from a CNI DEL's start until its claims are released in the API server (with --ipam-defer-release, after the DEL answered; each failed try counts as error), by result: ok, error.",
			Buckets: durationBuckets,
		}, []string{"result"}),
		reservations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_agent_ipam_reservations_total",
			Help: "Allocations of retained apps: hit (an address from the app's reserve) or miss (a fresh address from the pool).",
		}, []string{"result"}),
		reclaimed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_agent_ipam_reservations_reclaimed_total",
			Help: "Addresses reserved for an app that a pod of another app took over because the pool had no free address left (spec.reclaimReservations), by pool.",
		}, []string{"pool"}),
		prepared: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_agent_ipam_prepared_total",
			Help: "Pods whose addresses the agent allocated when they were scheduled to the node, before the runtime's ADD, by result: ok, error (ADD allocates then), used (an ADD got prepared addresses and made no API write before answering), released (no ADD took them: it asked for other pools, the pod ended without one, or it got its network elsewhere).",
		}, []string{"result"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_agent_ipam_address_conflicts_total",
			Help: "Addresses taken out of use because another host answered for them on a pod's link (berth-netcheck failed the pod's ADD and told the agent), by pool; each stays in state Conflict for --ipam-conflict-quarantine.",
		}, []string{"pool"}),
		recordsPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_agent_ipam_prepared_container_records_pending",
			Help: "Containers whose ADD got prepared addresses and whose claims do not record the container ID yet (one update each after the answer, at most 4 at once): a lasting rise means the API server falls behind or refuses the updates.",
		}),
		releasesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_agent_ipam_releases_pending",
			Help: "DELs answered whose claims are not released in the API server yet (--ipam-defer-release; at most 16 releases at once): a lasting rise means the API server falls behind or refuses the writes. The addresses stay held meanwhile.",
		}),
		gc: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_agent_ipam_gc_claims_total",
			Help: "Claims of the node that the runtime no longer lists, by source (cni: CNI GC; sweep: the agent's sweep against the runtime's sandboxes) and result: released, kept_live (kept: the pod still reports the address), refused (in a collection refused as too large).",
		}, []string{"source", "result"}),
		gcRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_agent_ipam_gc_runs_total",
			Help: "Garbage collections of the node's claims, by source (cni, sweep) and result: ok, refused (it would have released more than --ipam-gc-max-share of the node's held claims at once: nothing released), error (e.g. the runtime's CRI socket or the API server unreachable).",
		}, []string{"source", "result"}),
		quarantined: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_agent_ipam_del_records_quarantined",
			Help: "DEL records in the queue directory's quarantine/ (as of the agent's start or its last quarantine): the API server rejected their release for good (RBAC, validation, an admission webhook or policy), or they could not be read. Their addresses stay held until an operator acts (the Event says how).",
		}),
	}
	var err error
	for _, h := range []**prometheus.HistogramVec{&m.allocation, &m.release} {
		if *h, err = promreg.Register(reg, *h); err != nil {
			return nil, err
		}
	}
	for _, c := range []**prometheus.CounterVec{&m.reservations, &m.reclaimed, &m.prepared, &m.gc, &m.gcRuns, &m.conflicts} {
		if *c, err = promreg.Register(reg, *c); err != nil {
			return nil, err
		}
	}
	for _, g := range []*prometheus.Gauge{&m.recordsPending, &m.releasesPending, &m.quarantined} {
		if *g, err = promreg.Register(reg, *g); err != nil {
			return nil, err
		}
	}
	m.reservations.WithLabelValues("hit")
	m.reservations.WithLabelValues("miss")
	for _, r := range []string{"ok", "error", "used", "released", "stale"} {
		m.prepared.WithLabelValues(r)
	}
	for _, src := range []string{gcSourceCNI, gcSourceSweep} {
		for _, r := range []string{"released", "kept_live", "refused"} {
			m.gc.WithLabelValues(src, r)
		}
		for _, r := range []string{"ok", "refused", "error"} {
			m.gcRuns.WithLabelValues(src, r)
		}
	}
	return m, nil
}
