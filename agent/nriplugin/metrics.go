package nriplugin

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	connected prometheus.Gauge
	connects  prometheus.Counter
	events    *prometheus.CounterVec
}

// newMetrics makes the plugin's metrics and registers them with reg, if
// any. When reg already holds them (a second Plugin in the same process),
// the registered ones are used, so the series continue.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_agent_nri_connected",
			Help: "1 while the agent is registered with the runtime's NRI socket, else 0.",
		}),
		connects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_agent_nri_connects_total",
			Help: "Connections made to the runtime's NRI socket (each reconnect counts).",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_agent_nri_events_total",
			Help: "NRI pod and container events received, by event.",
		}, []string{"event"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.connected, err = register(reg, m.connected); err != nil {
		return nil, err
	}
	if m.connects, err = register(reg, m.connects); err != nil {
		return nil, err
	}
	if m.events, err = register(reg, m.events); err != nil {
		return nil, err
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("register metrics: %w", err)
}
