// Package nriplugin connects the agent to the container runtime through NRI
// (github.com/containerd/nri): it registers as a plugin on the runtime's NRI
// socket, counts and logs pod and container events, runs Berth's hooks in
// CreateContainer, and reconnects with backoff whenever the runtime goes
// away. It never exits the process.
package nriplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/util/wait"
)

// Defaults for Config.
const (
	DefaultSocketPath     = api.DefaultSocketPath // /var/run/nri/nri.sock
	DefaultPluginName     = "berth"
	DefaultPluginIndex    = 10
	DefaultMinBackoff     = 250 * time.Millisecond
	DefaultMaxBackoff     = 10 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	DefaultSyncWarnAfter  = 10 * time.Second
)

// ErrNotConnected is returned by Check while the plugin has no live
// connection to the runtime.
var ErrNotConnected = errors.New("not connected to the runtime's NRI socket")

// Config configures a Plugin. The zero value of each field means its default.
type Config struct {
	// SocketPath is the runtime's NRI socket. Default DefaultSocketPath.
	SocketPath string
	// PluginName is the name the plugin registers with. Default "berth".
	PluginName string
	// PluginIndex orders the plugin among the runtime's NRI plugins, 0 to 99
	// (lower runs first). Nil means DefaultPluginIndex.
	PluginIndex *int
	// Hooks run in this order in CreateContainer; their adjustments are
	// merged into the one the runtime gets.
	Hooks []Hook
	// Logger receives the plugin's logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer gets the plugin's metrics. Nil means they are not exported.
	Registerer prometheus.Registerer
	// MinBackoff is the first wait before reconnecting; it doubles after
	// each failed attempt up to MaxBackoff and is reset after a connect.
	MinBackoff time.Duration
	// MaxBackoff caps the wait between reconnect attempts.
	MaxBackoff time.Duration
	// ConnectTimeout bounds one attempt to connect, register and be
	// configured by the runtime.
	ConnectTimeout time.Duration
	// SyncWarnAfter is how long after a connect the plugin waits for the
	// runtime's Synchronize before it logs a warning. Until then containerd
	// holds the creation, start, stop and removal of every pod and
	// container on the node.
	SyncWarnAfter time.Duration
	// OnStateChange, if set, is called after each connect and each lost
	// connection (not when Start ends), from the plugin's own goroutine.
	// It must not block.
	OnStateChange func(State)
}

// State describes the connection to the runtime, for Config.OnStateChange.
type State struct {
	Connected bool
	// Runtime and RuntimeVersion are as the runtime reported them when it
	// configured the plugin (e.g. "containerd", "v2.2.9").
	Runtime        string
	RuntimeVersion string
}

// Plugin is the agent's NRI plugin. Start it with Start, e.g. as a
// controller-runtime manager.Runnable.
type Plugin struct {
	cfg       Config
	idx       string
	log       *slog.Logger
	metrics   *metrics
	connected atomic.Bool
}

// New validates cfg, sets its defaults and registers the plugin's metrics.
func New(cfg Config) (*Plugin, error) {
	if cfg.SocketPath == "" {
		cfg.SocketPath = DefaultSocketPath
	}
	if cfg.PluginName == "" {
		cfg.PluginName = DefaultPluginName
	}
	if err := api.CheckPluginName(cfg.PluginName); err != nil {
		return nil, err
	}
	idx := DefaultPluginIndex
	if cfg.PluginIndex != nil {
		idx = *cfg.PluginIndex
	}
	if idx < 0 || idx > 99 {
		return nil, fmt.Errorf("plugin index %d: want 0 to 99", idx)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MinBackoff < 0 || cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("backoff %s to %s: want 0 < min <= max", cfg.MinBackoff, cfg.MaxBackoff)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.ConnectTimeout < 0 {
		return nil, fmt.Errorf("connect timeout %s: want > 0", cfg.ConnectTimeout)
	}
	if cfg.SyncWarnAfter == 0 {
		cfg.SyncWarnAfter = DefaultSyncWarnAfter
	}
	if cfg.SyncWarnAfter < 0 {
		return nil, fmt.Errorf("sync warning delay %s: want > 0", cfg.SyncWarnAfter)
	}
	for i, h := range cfg.Hooks {
		if h == nil {
			return nil, fmt.Errorf("hook %d is nil", i)
		}
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Plugin{
		cfg:     cfg,
		idx:     fmt.Sprintf("%02d", idx),
		log:     cfg.Logger,
		metrics: m,
	}, nil
}

// Connected reports whether the plugin is registered with the runtime now.
func (p *Plugin) Connected() bool { return p.connected.Load() }

// Check is a healthz.Checker: nil while connected, ErrNotConnected otherwise.
func (p *Plugin) Check(*http.Request) error {
	if !p.Connected() {
		return ErrNotConnected
	}
	return nil
}

// Start connects to the runtime and keeps reconnecting, with exponential
// backoff, until ctx is done. It returns nil when ctx is done; it has no
// other way to end.
func (p *Plugin) Start(ctx context.Context) error {
	b := p.newBackoff()
	var lastErr string
	for attempt := 1; ; attempt++ {
		err := p.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case err == nil:
			// The connection was up and is gone: start over quickly.
			b = p.newBackoff()
			lastErr = ""
			attempt = 0
		case err.Error() != lastErr:
			// Logged once per distinct error, not at every retry.
			p.log.Warn("cannot connect to runtime", "err", err, "attempt", attempt,
				"retry_in_seconds", b.Duration.Seconds())
			lastErr = err.Error()
		default:
			p.log.Debug("cannot connect to runtime", "err", err, "attempt", attempt,
				"retry_in_seconds", b.Duration.Seconds())
		}
		t := time.NewTimer(b.Step())
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// session makes one connection to the runtime and holds it until it closes
// or ctx is done. It returns an error only when it could not connect.
func (p *Plugin) session(ctx context.Context) error {
	var (
		closed    = make(chan struct{})
		closeOnce sync.Once
		connMu    sync.Mutex
		conn      net.Conn
	)
	h := &handler{p: p, dialed: time.Now(), synced: make(chan struct{})}
	s, err := stub.New(h,
		stub.WithPluginName(p.cfg.PluginName),
		stub.WithPluginIdx(p.idx),
		stub.WithSocketPath(p.cfg.SocketPath),
		stub.WithLogger(NewNRILogger(p.cfg.Logger.With("component", "nri-stub"))),
		stub.WithOnClose(func() { closeOnce.Do(func() { close(closed) }) }),
		// The dialer keeps the connection so that an attempt the runtime
		// never answers can be cut off below.
		stub.WithDialer(func(path string) (net.Conn, error) {
			d := net.Dialer{Timeout: p.cfg.ConnectTimeout}
			c, err := d.DialContext(ctx, "unix", path)
			connMu.Lock()
			conn = c
			connMu.Unlock()
			return c, err
		}),
	)
	if err != nil {
		return fmt.Errorf("nri stub: %w", err)
	}

	// stub.Start waits for the runtime's Configure request without a
	// deadline, so it runs aside and is bounded here.
	started := make(chan error, 1)
	go func() { started <- s.Start(ctx) }()
	timeout := time.NewTimer(p.cfg.ConnectTimeout)
	defer timeout.Stop()
	select {
	case err := <-started:
		if err != nil {
			return fmt.Errorf("connect to %s: %w", p.cfg.SocketPath, err)
		}
	case <-timeout.C:
		connMu.Lock()
		if conn != nil {
			conn.Close()
		}
		connMu.Unlock()
		return fmt.Errorf("connect to %s: not configured by the runtime within %s", p.cfg.SocketPath, p.cfg.ConnectTimeout)
	case <-ctx.Done():
		connMu.Lock()
		if conn != nil {
			conn.Close()
		}
		connMu.Unlock()
		return ctx.Err()
	}

	// Configure happened before Start returned, so these are set.
	st := State{Connected: true, Runtime: h.runtime, RuntimeVersion: h.runtimeVersion}
	p.log.Info("connected to runtime", "runtime", st.Runtime, "runtime_version", st.RuntimeVersion,
		"plugin", p.idx+"-"+p.cfg.PluginName, "socket", p.cfg.SocketPath)
	p.setConnected(st, true)

	warn := time.NewTimer(p.cfg.SyncWarnAfter)
	defer warn.Stop()
	synced := h.synced
	for {
		select {
		case <-synced:
			synced = nil
			warn.Stop()
		case <-warn.C:
			// containerd/containerd#14083: a container stop holds off the
			// sync for as long as the container takes to stop.
			p.log.Warn("the runtime has not synchronized this plugin yet; until it does, containerd holds the creation, start, stop and removal of pods and containers on this node. "+
				"A container stop in progress delays it until the container has stopped, up to its pod's termination grace period (containerd/containerd#14083)",
				"waited_seconds", time.Since(h.dialed).Seconds(), "runtime", st.Runtime, "runtime_version", st.RuntimeVersion)
		case <-closed:
			p.log.Warn("lost connection to runtime", "runtime", st.Runtime, "runtime_version", st.RuntimeVersion,
				"socket", p.cfg.SocketPath)
			st.Connected = false
			p.setConnected(st, true)
			return nil
		case <-ctx.Done():
			s.Stop()
			st.Connected = false
			p.setConnected(st, false) // shutting down is not news
			p.log.Info("disconnected from runtime", "reason", "shutting down")
			return nil
		}
	}
}

// setConnected publishes a connect or a loss: Connected() changes last, so
// whoever sees it change also sees the metrics and OnStateChange done.
func (p *Plugin) setConnected(st State, notify bool) {
	if notify && p.cfg.OnStateChange != nil {
		p.cfg.OnStateChange(st)
	}
	if st.Connected {
		p.metrics.connected.Set(1)
		p.metrics.connects.Inc()
	} else {
		p.metrics.connected.Set(0)
		p.metrics.synchronized.Set(0)
	}
	p.connected.Store(st.Connected)
}

// newBackoff returns the waits between connection attempts: MinBackoff,
// doubling after each failed attempt, capped at MaxBackoff.
func (p *Plugin) newBackoff() wait.Backoff {
	return wait.Backoff{Duration: p.cfg.MinBackoff, Factor: 2, Cap: p.cfg.MaxBackoff, Steps: math.MaxInt32}
}
