package promtest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestValue(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total", Help: "c"}, []string{"a", "b"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g", Help: "g"})
	reg.MustRegister(c, g)
	c.WithLabelValues("x", "1").Add(2)
	c.WithLabelValues("x", "2").Add(3)
	c.WithLabelValues("y", "1").Add(5)
	g.Set(7)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
		n      int
	}{
		{"c_total", nil, 10, 3},
		{"c_total", map[string]string{"a": "x"}, 5, 2},
		{"c_total", map[string]string{"a": "x", "b": "2"}, 3, 1},
		{"c_total", map[string]string{"a": "z"}, 0, 0},
		{"c_total", map[string]string{"c": "x"}, 0, 0},
		{"g", nil, 7, 1},
		{"none", nil, 0, 0},
	} {
		if got, n := Value(t, reg, tc.name, tc.labels); got != tc.want || n != tc.n {
			t.Errorf("Value(%s, %v) = %v, %d series; want %v, %d", tc.name, tc.labels, got, n, tc.want, tc.n)
		}
	}
}
