// Package ipamserver is the agent's IPAM server: berth-ipam (the CNI binary)
// asks it for addresses over a unix socket, and it allocates them with
// agent/ipam from an informer cache, committing IPClaims through the API
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
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	"github.com/berth-io/berth/agent/ipam"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
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
	Store ipam.Store
	// WaitForSync, if set, is called before the socket is served and must
	// return true once the store's cache is synced.
	WaitForSync func(context.Context) bool
	// DeferRelease answers a DEL once its request is recorded in QueueDir
	// and commits the release right after (see release.go); false: DEL
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
	// ipam.DefaultGCMinRefuse); more is refused as a truncated list.
	// Default ipam.DefaultGCMaxShare.
	GCMaxShare float64
	// Logger. Default slog.Default().
	Logger *slog.Logger
}

// Server serves the IPAM socket; it is a manager.Runnable.
type Server struct {
	cfg     Config
	alloc   *ipam.Allocator
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
	alloc, err := ipam.New(ipam.Config{Store: cfg.Store, Node: cfg.Node})
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

// errorCode maps an allocation error to a CNI error code.
func errorCode(err error) uint {
	switch {
	case ipam.Retryable(err):
		return protocol.CodeTryAgainLater
	case errors.Is(err, ipam.ErrBadAnnotation), errors.Is(err, ipam.ErrUnknownPool), errors.Is(err, ipam.ErrBadPool):
		return protocol.CodeInvalidConfig
	}
	var e *ipam.Error
	if errors.As(err, &e) {
		return 100 // allocation refused: exhausted, forbidden, no pool
	}
	return protocol.CodeInternal
}

func (s *Server) add(ctx context.Context, req *protocol.Request) *protocol.Response {
	start := time.Now()
	if req.ContainerID == "" || req.IfName == "" || req.PodNamespace == "" || req.PodName == "" {
		return errResponse(protocol.CodeInvalidConfig, "berth-ipam needs the container ID, interface and the pod's namespace and name (CNI_ARGS K8S_POD_NAMESPACE, K8S_POD_NAME)", nil)
	}
	s.mu.Lock()
	s.recent[req.ContainerID] = start
	for id, t := range s.recent {
		if start.Sub(t) > gcGrace {
			delete(s.recent, id)
		}
	}
	s.mu.Unlock()
	// One allocation per pod at a time (ADD, or its preparation), after
	// the claims of its earlier containers record them.
	unlock := s.locks.lock(req.PodNamespace, req.PodName)
	defer unlock()
	if err := s.waitPending(ctx, req.PodNamespace+"/"+req.PodName, types.UID(req.PodUID), req.ContainerID); err != nil {
		return errResponse(protocol.CodeTryAgainLater, "berth-ipam ADD failed", err)
	}
	s.warnAnnotationsAtAdd(req.PodNamespace, req.PodName, types.UID(req.PodUID))
	areq := ipam.Request{ContainerID: req.ContainerID, IfName: req.IfName,
		PodNamespace: req.PodNamespace, PodName: req.PodName, PodUID: types.UID(req.PodUID), Pools: req.Pools, Network: req.Network}
	als, err := s.alloc.Allocate(ctx, areq)
	if errors.Is(err, ipam.ErrHeld) && s.releases.waitAll(ctx, heldWait) {
		// The address may be held by a container whose DEL this agent
		// answered and is releasing: those take milliseconds.
		als, err = s.alloc.Allocate(ctx, areq)
	}
	log := s.cfg.Logger.With("pod", req.PodNamespace+"/"+req.PodName, "container_id", req.ContainerID, "interface", req.IfName,
		"duration_seconds", time.Since(start).Seconds())
	if err != nil {
		result := "error"
		if ipam.Retryable(err) {
			result = "retry"
		}
		s.metrics.allocation.WithLabelValues(result).Observe(time.Since(start).Seconds())
		log.Warn("ADD failed", "err", err, "retryable", ipam.Retryable(err))
		return errResponse(errorCode(err), "berth-ipam ADD failed", err)
	}
	if req.IfName == PrepareInterface {
		s.learnPools(req.Pools)
	}
	if err := s.recordAttachment(ctx, req, als); err != nil {
		s.metrics.allocation.WithLabelValues("error").Observe(time.Since(start).Seconds())
		log.Warn("ADD failed", "err", err)
		return errResponse(protocol.CodeInternal, "berth-ipam ADD failed", err)
	}
	s.metrics.allocation.WithLabelValues("ok").Observe(time.Since(start).Seconds())
	resp := &protocol.Response{}
	for _, a := range als {
		if !a.Repeated {
			s.countReservation(a)
		}
		ip := protocol.IP{Address: a.Address.String(), Pool: a.Pool}
		if a.Gateway.IsValid() {
			ip.Gateway = a.Gateway.String()
		}
		resp.IPs = append(resp.IPs, ip)
		for _, r := range a.Routes {
			rt := protocol.Route{Dst: r.Dst.String()}
			if r.GW.IsValid() {
				rt.GW = r.GW.String()
			}
			resp.Routes = append(resp.Routes, rt)
		}
		if a.Reclaimed {
			// The previous app's next pod will not get this address back.
			s.metrics.reclaimed.WithLabelValues(a.Pool).Inc()
			log.Info("ADD reclaimed the reservation of another app (no free address left in the pool)", "address", a.Address.String(),
				"pool", a.Pool, "claim", a.Claim, "retained", a.Retained, "previous_app", appString(a.PreviousApp))
		} else {
			attrs := []any{"address", a.Address.String(), "pool", a.Pool, "claim", a.Claim, "retained", a.Retained}
			if a.Repeated {
				// Chosen before this ADD: whether from the app's reserve
				// was logged then ("prepared", or the container's first ADD).
				attrs = append(attrs, "repeated", true, "prepared", a.Prepared)
			} else {
				attrs = append(attrs, "reused", a.Reused)
			}
			log.Info("ADD", attrs...)
		}
	}
	if len(als) > 0 {
		s.releaseUnused(als[0].PodUID, req.IfName, als) //nolint:contextcheck // outlives the request, bounded by Start's context
	}
	return resp
}

// countReservation counts a retained app's allocation as a reservation
// hit or miss.
func (s *Server) countReservation(a ipam.Allocation) {
	switch {
	case !a.Retained:
	case a.Reused:
		s.metrics.reservations.WithLabelValues("hit").Inc()
	default:
		s.metrics.reservations.WithLabelValues("miss").Inc()
	}
}

// recordAttachment writes the ADD's attachment record (for early release)
// and records the container on prepared claims: after the answer when the
// record names them (bindLater), else now.
func (s *Server) recordAttachment(ctx context.Context, req *protocol.Request, als []ipam.Allocation) error {
	att := attachment{ContainerID: req.ContainerID, IfName: req.IfName, Netns: req.Netns, Network: req.Network}
	for _, a := range als {
		if a.Prepared {
			att.PodUID = a.PodUID
			att.Claims = append(att.Claims, a.Claim)
		}
	}
	var err error
	if req.Netns != "" {
		if err = writeAttachment(s.cfg.AttachmentDir, att); err != nil {
			s.cfg.Logger.Warn("cannot record the attachment; early release will not find it", "container_id", req.ContainerID, "err", err)
		}
	}
	if len(att.Claims) == 0 {
		return nil
	}
	s.metrics.prepared.WithLabelValues("used").Inc()
	if req.Netns != "" && err == nil {
		s.bindLater(req.PodNamespace+"/"+req.PodName, att) //nolint:contextcheck // outlives the request, bounded by Start's context
		return nil
	}
	for _, name := range att.Claims {
		if err := s.alloc.BindContainer(ctx, name, att.PodUID, req.ContainerID, req.Network); err != nil {
			return err
		}
	}
	return nil
}

// appString names an app for logs: kind/namespace/name, with the
// StatefulSet ordinal if any.
func appString(app *v1alpha1.App) string {
	if app == nil {
		return ""
	}
	out := string(app.Kind) + "/" + app.Namespace + "/" + app.Name
	if app.Ordinal != nil {
		out += "-" + strconv.Itoa(int(*app.Ordinal))
	}
	return out
}

func (s *Server) del(ctx context.Context, req *protocol.Request) *protocol.Response {
	start := time.Now()
	if req.ContainerID == "" {
		return errResponse(protocol.CodeInvalidConfig, "berth-ipam DEL needs the container ID", nil)
	}
	// The prepared claims still waiting to record the container are
	// released without that update: one write instead of two.
	var bound *pendingEntry
	if req.IfName == "" || req.IfName == PrepareInterface {
		bound = s.binds.cancel(req.ContainerID)
	}
	if s.cfg.DeferRelease {
		err := protocol.Enqueue(s.cfg.QueueDir, req)
		if err == nil {
			s.releaseLater(req, bound, start) //nolint:contextcheck // outlives the request, bounded by Start's context
			return &protocol.Response{}
		}
		s.cfg.Logger.Warn("cannot record the DEL in the queue directory; releasing before answering", "container_id", req.ContainerID,
			"interface", req.IfName, "err", err)
	}
	err := s.release(ctx, req, bound)
	s.observeRelease(start, err)
	if err != nil {
		s.cfg.Logger.Warn("DEL failed", "container_id", req.ContainerID, "interface", req.IfName, "err", err)
		return errResponse(protocol.CodeInternal, "berth-ipam DEL failed", err)
	}
	return &protocol.Response{}
}

// waitPending waits for the writes the agent makes after answering (see
// pendingWork.wait) to the claims of the container, the pod or the uid.
func (s *Server) waitPending(ctx context.Context, pod string, uid types.UID, containerID string) error {
	if err := s.binds.wait(ctx, pod, uid, containerID); err != nil {
		return err
	}
	return s.releases.wait(ctx, pod, uid, containerID)
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

// drainQueue runs the DELs berth-ipam queued while the agent was down, and
// those the agent answered but did not release before it stopped. A DEL
// that fails stays queued: the addresses it holds must not look free. A
// failure that trying again may fix (the API server unreachable, a
// timeout, a conflict) ends the drain, and Start retries it before
// serving. A DEL the API server rejects for good does not stop the others;
// the drain then fails too (Start retries it), until the record has been
// rejected QuarantineAfter times and moves to quarantine. A record that
// cannot be read as a DEL moves there at once.
func (s *Server) drainQueue(ctx context.Context) error {
	s.countQuarantined()
	files, err := filepath.Glob(filepath.Join(s.cfg.QueueDir, "*.json"))
	if err != nil {
		return fmt.Errorf("ipam server: queued DELs: %w", err)
	}
	var rejected []error
	for _, f := range files {
		data, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		var req protocol.Request
		if err == nil {
			if err = protocol.Decode(data, &req); err == nil && req.ContainerID == "" {
				err = errors.New("no container ID")
			}
		}
		if err != nil {
			s.quarantineMalformed(f, err)
			continue
		}
		if rerr := s.release(ctx, &req, nil); rerr != nil {
			err := fmt.Errorf("ipam server: queued DEL of container %s: %w", req.ContainerID, rerr)
			if !rejectedForGood(rerr) {
				return err
			}
			if !s.rejectedOnce(f) {
				rejected = append(rejected, err)
				continue
			}
			if qerr := s.quarantine(f, &req, rerr, s.cfg.QuarantineAfter); qerr != nil {
				return fmt.Errorf("%w; %w", err, qerr)
			}
			continue
		}
		s.forgetRejections(f)
		if err := os.Remove(f); err != nil {
			return fmt.Errorf("ipam server: queued DEL %s: %w", f, err)
		}
		s.cfg.Logger.Info("ran a queued DEL (the agent was down, or stopped before it released the claims)", "container_id", req.ContainerID, "interface", req.IfName)
	}
	return errors.Join(rejected...)
}
