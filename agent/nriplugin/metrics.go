package nriplugin

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-io/berth/internal/promreg"
)

type metrics struct {
	connected    prometheus.Gauge
	synchronized prometheus.Gauge
	connects     prometheus.Counter
	events       *prometheus.CounterVec
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
		synchronized: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_agent_nri_synchronized",
			Help: "1 once the runtime has synchronized the agent's current NRI connection, else 0. Connected but not synchronized: containerd holds pod and container operations on the node.",
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
	if m.connected, err = promreg.Register(reg, m.connected); err != nil {
		return nil, err
	}
	if m.synchronized, err = promreg.Register(reg, m.synchronized); err != nil {
		return nil, err
	}
	if m.connects, err = promreg.Register(reg, m.connects); err != nil {
		return nil, err
	}
	if m.events, err = promreg.Register(reg, m.events); err != nil {
		return nil, err
	}
	return m, nil
}
