package ipclaimgc

import "github.com/prometheus/client_golang/prometheus"

// Actions of the collector, the action label of berth_controller_ipclaim_gc_total.
const (
	actionReserved = "reserved"
	actionFreed    = "freed"
)

// Reasons a reservation ends, besides ReasonPodGone and ReasonNodeGone
// (a held claim's holder is gone).
const (
	reasonExpired = "Expired"
	reasonAppGone = "AppGone"
	// reasonQuarantineEnded: a Conflict claim's quarantine ended.
	reasonQuarantineEnded = "QuarantineEnded"
)

// newCollected returns berth_controller_ipclaim_gc_total, every series at 0.
func newCollected() *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "berth_controller_ipclaim_gc_total",
		Help: "Claims the garbage collector changed, by action: reserved (its holder ended without a CNI DEL; kept for its app until reservedUntil), freed (deleted); and reason: PodGone, NodeGone (the holder's pod or node), Expired (a reservation past reservedUntil), AppGone (a reservation whose Deployment, StatefulSet or ReplicaSet is gone), QuarantineEnded (an address another host answered for, out of use until reservedUntil).",
	}, []string{"action", "reason"})
	for _, why := range []string{ReasonPodGone, ReasonNodeGone} {
		c.WithLabelValues(actionReserved, why)
		c.WithLabelValues(actionFreed, why)
	}
	c.WithLabelValues(actionFreed, reasonExpired)
	c.WithLabelValues(actionFreed, reasonAppGone)
	c.WithLabelValues(actionFreed, reasonQuarantineEnded)
	return c
}
