package ipamserver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	allocation   *prometheus.HistogramVec
	release      *prometheus.HistogramVec
	reservations *prometheus.CounterVec
}

var durationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

func newMetrics(reg prometheus.Registerer, counts func(context.Context) ([]PoolCount, error)) (*metrics, error) {
	m := &metrics{
		allocation: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_ipam_allocation_duration_seconds",
			Help:    "Time to serve a CNI ADD, by result: ok, retry (the runtime should try again: a terminating pod still holds the address), error.",
			Buckets: durationBuckets,
		}, []string{"result"}),
		release: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_ipam_release_duration_seconds",
			Help:    "Time to serve a CNI DEL, by result: ok, error.",
			Buckets: durationBuckets,
		}, []string{"result"}),
		reservations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_ipam_reservations_total",
			Help: "Allocations of retained apps: hit (an address from the app's reserve) or miss (a fresh address from the pool).",
		}, []string{"result"}),
	}
	cs := []prometheus.Collector{m.allocation, m.release, m.reservations}
	if counts != nil {
		cs = append(cs, &poolCollector{counts: counts})
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); !ok {
				return nil, fmt.Errorf("register metrics: %w", err)
			}
		}
	}
	m.reservations.WithLabelValues("hit")
	m.reservations.WithLabelValues("miss")
	return m, nil
}

var poolDesc = prometheus.NewDesc("berth_ipam_pool_addresses",
	"Addresses of an IPPool by state: size (all it hands out), bound, reserved, free; as this agent's cache sees them.",
	[]string{"pool", "state"}, nil)

type poolCollector struct {
	counts func(context.Context) ([]PoolCount, error)
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) { ch <- poolDesc }

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := c.counts(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(poolDesc, err)
		return
	}
	for _, p := range counts {
		for state, v := range map[string]float64{"size": p.Size, "bound": p.Bound, "reserved": p.Reserved, "free": p.Free} {
			ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, v, p.Pool, state)
		}
	}
}
