// Package parts runs each long-running part of a process (the IPAM
// server's preparer, early releaser and sweep, log retention, ...) as a
// runnable of its own under the process's manager. A part that panics is
// recovered, logged with its stack and counted, and started again after a
// backoff; a part that stops before the process does, or is down after a
// panic, turns its readyz check red instead of leaving /readyz green.
package parts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/berth-io/berth/internal/promreg"
)

// Defaults of Config.
const (
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = time.Minute
)

// Metrics are the parts' metrics, shared by the parts of a process.
type Metrics struct {
	panics *prometheus.CounterVec
	up     *prometheus.GaugeVec
}

// NewMetrics registers berth_agent_part_panics_total and
// berth_agent_part_up with reg (reusing them if they are there).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_agent_part_panics_total",
			Help: "Panics recovered in a part of the process, by part; the part is started again after a backoff.",
		}, []string{"part"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_agent_part_up",
			Help: "1 while a part of the process runs, 0 once it stopped or while it waits to start again after a panic, by part.",
		}, []string{"part"}),
	}
	var err error
	if m.panics, err = promreg.Register(reg, m.panics); err != nil {
		return nil, err
	}
	if m.up, err = promreg.Register(reg, m.up); err != nil {
		return nil, err
	}
	return m, nil
}

// Config configures a Part.
type Config struct {
	// Name of the part: its readyz check, its metrics' label, its logs.
	Name string
	// Run runs the part until its context is done; it returns nil then.
	// Returning before (nil or an error) stops the part for good.
	Run func(context.Context) error
	// Metrics. Required.
	Metrics *Metrics
	// MinBackoff and MaxBackoff bound the wait before a part that
	// panicked starts again (doubling). Defaults 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// Logger. Default slog.Default().
	Logger *slog.Logger
}

// Part is a manager.Runnable running one part.
type Part struct {
	cfg Config

	mu    sync.Mutex
	state error // nil: running (or not started yet); else why it is not
}

// New validates cfg and returns a Part.
func New(cfg Config) (*Part, error) {
	if cfg.Name == "" || cfg.Run == nil || cfg.Metrics == nil {
		return nil, errors.New("part: want a name, a run function and metrics")
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Logger = cfg.Logger.With("part", cfg.Name)
	return &Part{cfg: cfg}, nil
}

// errPanicked is the state of a part waiting to start again.
var errPanicked = errors.New("panicked; starting again")

// Start runs the part until ctx is done. It never returns an error: a
// part that fails is reported by Check, not by stopping the others.
func (p *Part) Start(ctx context.Context) error {
	b := wait.Backoff{Duration: p.cfg.MinBackoff, Factor: 2, Cap: p.cfg.MaxBackoff, Steps: 1 << 30}
	up := p.cfg.Metrics.up.WithLabelValues(p.cfg.Name)
	for {
		p.set(nil)
		up.Set(1)
		err, panicked := p.runOnce(ctx)
		up.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		if !panicked {
			if err == nil {
				err = errors.New("stopped")
			}
			p.set(fmt.Errorf("part %s stopped: %w", p.cfg.Name, err))
			p.cfg.Logger.Error("part stopped before the process; readyz fails until the process restarts", "err", err)
			<-ctx.Done()
			return nil
		}
		p.set(fmt.Errorf("part %s %w: %w", p.cfg.Name, errPanicked, err))
		d := b.Step()
		p.cfg.Logger.Error("part panicked; starting it again", "err", err, "retry_in_seconds", d.Seconds())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
	}
}

// runOnce runs the part once, recovering a panic into an error.
func (p *Part) runOnce(ctx context.Context) (err error, panicked bool) {
	var perr error
	defer func() {
		if perr != nil {
			err, panicked = perr, true
		}
	}()
	defer p.cfg.Metrics.Recover(p.cfg.Name, p.cfg.Logger, &perr)
	return p.cfg.Run(ctx), false
}

func (p *Part) set(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = err
}

// Check is a readyz check: nil while the part runs.
func (p *Part) Check(*http.Request) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// Name is the part's name.
func (p *Part) Name() string { return p.cfg.Name }

// Recover, deferred in a goroutine of part (a worker, an event handler,
// background work it starts), recovers a panic there: it is logged with
// its stack, counted for the part, and returned in *err (nil: ignored),
// so that the goroutine's caller handles it as an error (requeues the
// item, say) rather than the whole process crashing. Defer it directly
// (recover works only there); a nil *Metrics counts nothing.
func (m *Metrics) Recover(part string, log *slog.Logger, err *error) {
	r := recover()
	if r == nil {
		return
	}
	if m != nil {
		m.panics.WithLabelValues(part).Inc()
	}
	log.Error("recovered a panic", "part", part, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	if err != nil {
		*err = fmt.Errorf("panic: %v", r)
	}
}
