// Package ipamserver is the agent's IPAM server: berth-ipam (the CNI binary)
// asks it for addresses over a unix socket, and it allocates them with
// internal/ipalloc from an informer cache, committing IPClaims through the API
// server.
package ipamserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/internal/ipalloc"
	"github.com/berth-io/berth/internal/parts"
)

// Defaults for Config.
const (
	DefaultRequestTimeout = 25 * time.Second
	DefaultQueueDir       = "/run/berth/ipam-del-queue"
	DefaultMinBackoff     = time.Second
	DefaultMaxBackoff     = 30 * time.Second
	// gcGrace keeps CNI GC off claims whose ADD began this recently.
	gcGrace = 2 * time.Minute
	// DefaultConflictQuarantine is how long an address another host
	// answered for stays out of use (Config.ConflictQuarantine).
	DefaultConflictQuarantine = time.Hour
	// heldWait bounds how long an ADD whose app's address is held waits
	// for the releases of DELs this agent answered before it says so.
	heldWait = 2 * time.Second
)

// Config configures a Server.
type Config struct {
	// SocketPath is the unix socket to serve. Default
	// protocol.DefaultSocket.
	SocketPath string
	// QueueDir holds the DELs berth-ipam queued while the agent was down,
	// and with DeferRelease those answered and not released yet; they run
	// before the socket is served. Default /run/berth/ipam-del-queue.
	QueueDir string
	// AttachmentDir records each ADD's netns (for early release), its
	// prepared claims (recorded after the answer) and, by the record's
	// time, when it ended (CNI GC's grace across restarts). Default
	// /run/berth/ipam-attachments.
	AttachmentDir string
	// EarlyRelease, with PodCache, releases the addresses of terminating
	// pods annotated berth.io/ip-release: early before their teardown
	// (needs CAP_NET_ADMIN and CAP_SYS_ADMIN and the runtime's netns
	// directory).
	EarlyRelease bool
	// Prepare, with PodCache, allocates a pod's addresses on eth0 as soon
	// as it is scheduled to the node, before the runtime's ADD (which then
	// makes no API write before it answers). It allocates from the pools
	// the CNI configuration names: those of the last ADD on eth0, else
	// those CNIConfDir shows; with neither, it starts after the first ADD.
	Prepare bool
	// CNIConfDir is the runtime's CNI configuration directory as the agent
	// sees it (read only). Prepare reads the pools of its default network
	// there until an ADD on eth0 tells them. Empty: from ADDs only.
	CNIConfDir string
	// PrepareWorkers is how many pods are prepared at once. Default 4.
	PrepareWorkers int
	// PodCache is the informer cache whose pods early release and Prepare
	// watch.
	PodCache cache.Cache
	// Node is this node's name. Required.
	Node string
	// Store is read and written by the allocator. Required.
	Store ipalloc.Store
	// WaitForSync, if set, is called before the socket is served and must
	// return true once the store's cache is synced.
	WaitForSync func(context.Context) bool
	// DeferRelease answers a DEL once its request is recorded in QueueDir
	// and commits the release right after (see del.go); false: DEL
	// answers once the release is committed.
	DeferRelease bool
	// QuarantineAfter is how many times the API server must reject a
	// DEL's release for good (RBAC, validation, an admission webhook or
	// policy: see rejectedForGood) before its record moves to
	// QueueDir/quarantine and the DEL stops being retried; its claims
	// stay held. Default DefaultQuarantineAfter.
	QuarantineAfter int
	// Recorder records Events: early release's and those of Berth
	// annotations the agent does not understand on the pods, a
	// quarantined DEL's on its pod or the Node, address conflicts'. Nil: none.
	Recorder events.EventRecorder
	// ConflictQuarantine is how long an address berth-netcheck found in
	// use by another host stays out of use (claim state Conflict) before
	// berth-controller frees it. Default 1h.
	ConflictQuarantine time.Duration
	// Registerer receives the metrics. Default: a new registry.
	Registerer prometheus.Registerer
	// RequestTimeout bounds one request. Default 25s.
	RequestTimeout time.Duration
	// MinBackoff is the first wait before Start retries a failed step
	// before serving (the cache sync, the queued DELs, e.g. while the API
	// server is unreachable); it doubles after each failure up to
	// MaxBackoff. Defaults 1s and 30s.
	MinBackoff time.Duration
	// MaxBackoff caps the wait between those retries.
	MaxBackoff time.Duration
	// Sandboxes lists the runtime's pod sandboxes (CRI); with it the
	// server sweeps its node's claims every SweepInterval (sweep in gc.go).
	// Nil: no sweep (CNI GC, when the runtime sends it, still runs).
	Sandboxes SandboxLister
	// SweepInterval is how often the node's claims are swept. Default 1m.
	SweepInterval time.Duration
	// GCMaxShare is the share of the node's held claims one garbage
	// collection (CNI GC or a sweep) may release at once (at least
	// ipalloc.DefaultGCMinRefuse); more is refused as a truncated list.
	// Default ipalloc.DefaultGCMaxShare.
	GCMaxShare float64
	// Logger. Default slog.Default().
	Logger *slog.Logger
}

// Server serves the IPAM socket; it is a manager.Runnable.
type Server struct {
	cfg     Config
	alloc   *ipalloc.Allocator
	metrics *metrics
	ready   atomic.Bool
	// bg bounds the work that outlives a request (recording the
	// container on prepared claims): Start's context.
	bg    context.Context
	locks podLocks
	// binds record the container on prepared claims after ADD answered.
	binds pendingWork
	// releases release a container's claims after DEL answered.
	releases pendingWork
	learned  atomic.Pointer[[]string] // pools of the CNI configuration, from the last ADD on eth0 or CNIConfDir
	confDir  struct {
		sync.Mutex
		last string // the last error reading CNIConfDir, logged
	}

	// serving is closed once the socket is served: the parts (parts.go)
	// start then.
	serving chan struct{}
	parts   *parts.Metrics

	warnedMu sync.Mutex
	warned   map[types.UID]*warnedPod // pods whose annotation Events were recorded
	// watchingAnnotations: the pod watch checks the annotations, ADD
	// need not.
	watchingAnnotations atomic.Bool

	rejectMu sync.Mutex
	rejected rejections // DEL records the API server rejected for good, not quarantined yet

	mu       sync.Mutex
	recent   map[string]time.Time // container ID -> ADD start
	notReady error                // why the socket is not served yet, when a step failed
}

// New validates cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("ipam server: no store")
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = protocol.DefaultSocket
	}
	if !filepath.IsAbs(cfg.SocketPath) {
		return nil, fmt.Errorf("ipam server: socket %q: want an absolute path", cfg.SocketPath)
	}
	if cfg.QueueDir == "" {
		cfg.QueueDir = DefaultQueueDir
	}
	if cfg.AttachmentDir == "" {
		cfg.AttachmentDir = DefaultAttachmentDir
	}
	if cfg.EarlyRelease && cfg.PodCache == nil {
		return nil, errors.New("ipam server: early release needs a pod cache")
	}
	if cfg.Prepare && cfg.PodCache == nil {
		return nil, errors.New("ipam server: preparing addresses needs a pod cache")
	}
	if cfg.PrepareWorkers == 0 {
		cfg.PrepareWorkers = DefaultPrepareWorkers
	}
	if cfg.QuarantineAfter == 0 {
		cfg.QuarantineAfter = DefaultQuarantineAfter
	}
	if cfg.QuarantineAfter < 0 {
		return nil, fmt.Errorf("ipam server: quarantine after %d rejections: want at least 1", cfg.QuarantineAfter)
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.ConflictQuarantine == 0 {
		cfg.ConflictQuarantine = DefaultConflictQuarantine
	}
	if cfg.ConflictQuarantine < 0 {
		return nil, fmt.Errorf("ipam server: conflict quarantine %s: want > 0", cfg.ConflictQuarantine)
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MinBackoff < 0 || cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("ipam server: backoff %s to %s: want 0 < min <= max", cfg.MinBackoff, cfg.MaxBackoff)
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.SweepInterval < 0 || cfg.GCMaxShare < 0 || cfg.GCMaxShare > 1 {
		return nil, fmt.Errorf("ipam server: sweep interval %s, GC max share %g: want a positive interval and a share in (0, 1]", cfg.SweepInterval, cfg.GCMaxShare)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	alloc, err := ipalloc.New(ipalloc.Config{Store: cfg.Store, Node: cfg.Node})
	if err != nil {
		return nil, fmt.Errorf("ipam server: %w", err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("ipam server: %w", err)
	}
	pm, err := parts.NewMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("ipam server: %w", err)
	}
	return &Server{cfg: cfg, alloc: alloc, metrics: m, parts: pm, serving: make(chan struct{}), recent: map[string]time.Time{}, bg: context.Background(),
		binds:    newPendingWork(bindWorkers, m.recordsPending, "the prepared claims do not record their container yet"),
		releases: newPendingWork(releaseWorkers, m.releasesPending, "the claims are not released yet from an earlier DEL"),
	}, nil
}

// errNotSynced is why the socket is not served while the cache syncs.
var errNotSynced = errors.New("the cache did not sync")

// Start serves the socket until ctx is done. Before serving it waits for
// the cache and runs the queued DELs, retrying either with backoff while it
// fails (e.g. the API server is unreachable): not ready meanwhile, and
// Check says why. It returns nil when ctx ends first.
func (s *Server) Start(ctx context.Context) error {
	s.bg = ctx
	if s.cfg.WaitForSync != nil {
		err := s.retry(ctx, "wait for the cache", func(ctx context.Context) error {
			if !s.cfg.WaitForSync(ctx) {
				return errNotSynced
			}
			return nil
		})
		if err != nil {
			return nil // ctx is done
		}
	}
	// Before the queued DELs, which find claims by container.
	if err := s.retry(ctx, "read the attachment records (record the containers of prepared claims)", s.readAttachments); err != nil {
		return nil // ctx is done
	}
	if err := s.retry(ctx, "run the DELs queued while the agent was down", s.drainQueue); err != nil {
		return nil // ctx is done
	}
	if err := os.MkdirAll(filepath.Dir(s.cfg.SocketPath), 0o755); err != nil {
		return fmt.Errorf("ipam server: %w", err)
	}
	if err := os.Remove(s.cfg.SocketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ipam server: remove stale socket: %w", err)
	}
	l, err := (&net.ListenConfig{}).Listen(ctx, "unix", s.cfg.SocketPath)
	if err != nil {
		return fmt.Errorf("ipam server: %w", err)
	}
	if err := os.Chmod(s.cfg.SocketPath, 0o600); err != nil {
		_ = l.Close()
		return fmt.Errorf("ipam server: %w", err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	if s.cfg.PodCache != nil && s.cfg.Recorder != nil {
		if err := s.watchAnnotations(ctx); err != nil {
			s.cfg.Logger.Warn("cannot watch the node's pods for Berth annotations the agent does not understand; it checks them at ADD only", "err", err)
		}
	}
	if s.cfg.Prepare {
		s.loadPools()
	}
	s.ready.Store(true)
	close(s.serving)
	s.cfg.Logger.Info("serving IPAM", "socket", s.cfg.SocketPath, "node", s.cfg.Node)
	select {
	case <-ctx.Done():
		s.ready.Store(false)
		// ctx is done: give requests in flight their own budget to finish.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.RequestTimeout)
		defer cancel()
		err := srv.Shutdown(sctx)
		_ = os.Remove(s.cfg.SocketPath)
		// They stop with ctx; the next Start finishes them.
		s.binds.wg.Wait()
		s.releases.wg.Wait()
		return err
	case err := <-errc:
		s.ready.Store(false)
		return fmt.Errorf("ipam server: %w", err)
	}
}

// Check is a readyz check: ready while the socket is served; else the
// error of the last failed step before serving, if any.
func (s *Server) Check(*http.Request) error {
	if s.ready.Load() {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.notReady != nil {
		return fmt.Errorf("ipam socket not served yet: %w", s.notReady)
	}
	return errors.New("ipam socket not served yet")
}

// retry runs step until it succeeds, waiting MinBackoff after the first
// failure and doubling up to MaxBackoff. Each failure is logged and kept
// for Check. It returns ctx's error when ctx ends first.
func (s *Server) retry(ctx context.Context, what string, step func(context.Context) error) error {
	b := wait.Backoff{Duration: s.cfg.MinBackoff, Factor: 2, Cap: s.cfg.MaxBackoff, Steps: math.MaxInt32}
	for attempt := 1; ; attempt++ {
		err := step(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.mu.Lock()
		s.notReady = err
		s.mu.Unlock()
		if err == nil {
			return nil
		}
		s.cfg.Logger.Warn("ipam server: cannot "+what+"; retrying", "err", err, "attempt", attempt, "retry_in_seconds", b.Duration.Seconds())
		t := time.NewTimer(b.Step())
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Handler serves POST /v1/<command>.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for cmd, h := range map[string]func(context.Context, *protocol.Request) *protocol.Response{
		protocol.CommandAdd: s.add, protocol.CommandDel: s.del, protocol.CommandCheck: s.check,
		protocol.CommandGC: s.gc, protocol.CommandStatus: s.status, protocol.CommandConflict: s.conflict,
	} {
		mux.HandleFunc("POST /v1/"+cmd, func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
			defer cancel()
			var resp *protocol.Response
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			var req protocol.Request
			if err == nil {
				err = protocol.Decode(body, &req)
			}
			if err != nil {
				resp = errResponse(protocol.CodeInvalidConfig, "bad request", err)
			} else {
				resp = h(ctx, &req)
			}
			w.Header().Set("Content-Type", "application/json")
			_ = jsonEncode(w, resp)
		})
	}
	return mux
}

func errResponse(code uint, msg string, err error) *protocol.Response {
	e := &protocol.Error{Code: code, Msg: msg}
	if err != nil {
		e.Details = err.Error()
	}
	return &protocol.Response{Error: e}
}

func (s *Server) check(ctx context.Context, req *protocol.Request) *protocol.Response {
	if err := s.waitPending(ctx, "", "", req.ContainerID); err != nil {
		return errResponse(protocol.CodeInternal, "berth-ipam CHECK failed", err)
	}
	claims, err := s.alloc.Check(ctx, req.ContainerID, req.IfName)
	if err != nil {
		return errResponse(protocol.CodeInternal, "berth-ipam CHECK failed", err)
	}
	resp := &protocol.Response{}
	for _, c := range claims {
		resp.IPs = append(resp.IPs, protocol.IP{Address: c.Spec.Address, Pool: c.Spec.Pool})
	}
	return resp
}

func (s *Server) status(context.Context, *protocol.Request) *protocol.Response {
	if !s.ready.Load() {
		return errResponse(50, "berth-agent's IPAM server is not ready", nil)
	}
	return &protocol.Response{}
}
