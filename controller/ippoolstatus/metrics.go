package ippoolstatus

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/promreg"
)

var (
	addressesDesc = prometheus.NewDesc("berth_controller_ippool_addresses",
		"Addresses of an IPPool by state: size (all it hands out), bound, reserved, conflict (out of use after another host answered for it), free; its status as last counted (at most 1 s behind its claims).",
		[]string{"pool", "state"}, nil)
	conditionDesc = prometheus.NewDesc("berth_controller_ippool_condition",
		"1 when the IPPool's condition (Ready, Exhausted) is True, else 0.",
		[]string{"pool", "condition"}, nil)
)

// collector reports every pool's status. Only the leader reports (elected
// closed): standby replicas read the same status, and their copies of the
// series would be duplicates to remove in every query.
type collector struct {
	mu      sync.Mutex
	reader  client.Reader
	elected <-chan struct{}
}

// RegisterMetrics registers the pool gauges with reg. They read the pools
// from r (the manager's cache) on each scrape, once elected is closed.
// When reg holds them already (a second manager in one process), they
// read from the newest r.
func RegisterMetrics(reg prometheus.Registerer, r client.Reader, elected <-chan struct{}) error {
	c, err := promreg.Register(reg, &collector{})
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reader, c.elected = r, elected
	return nil
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- addressesDesc
	ch <- conditionDesc
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	r, elected := c.reader, c.elected
	c.mu.Unlock()
	if r == nil {
		return
	}
	select {
	case <-elected:
	default:
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var pools v1alpha1.IPPoolList
	if err := r.List(ctx, &pools, client.UnsafeDisableDeepCopy); err != nil {
		ch <- prometheus.NewInvalidMetric(addressesDesc, err)
		return
	}
	for i := range pools.Items {
		p := &pools.Items[i]
		if p.Status.ObservedGeneration == 0 {
			continue // not counted yet: its zeros would read as an empty pool
		}
		st := p.Status
		for state, v := range map[string]int64{"size": st.Size, "bound": st.Bound, "reserved": st.Reserved, "conflict": st.Conflict, "free": st.Free} {
			ch <- prometheus.MustNewConstMetric(addressesDesc, prometheus.GaugeValue, float64(v), p.Name, state)
		}
		for _, cond := range []string{ConditionReady, ConditionExhausted} {
			v := 0.0
			if meta.IsStatusConditionTrue(st.Conditions, cond) {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(conditionDesc, prometheus.GaugeValue, v, p.Name, cond)
		}
	}
}
