package ipamserver

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/internal/ipalloc"
)

// ADD: the pod's lock (an ADD and the preparation of one pod never
// allocate at once), the allocation (internal/ipalloc), the answer, then the
// attachment record and, for prepared claims, the container recorded on
// them (attachment.go); the pools of an ADD on eth0 are learned for the
// preparer, and prepared claims the ADD did not use are released.

// add serves CNI ADD.
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
	areq := ipalloc.Request{ContainerID: req.ContainerID, IfName: req.IfName,
		PodNamespace: req.PodNamespace, PodName: req.PodName, PodUID: types.UID(req.PodUID), Pools: req.Pools, Network: req.Network}
	als, err := s.alloc.Allocate(ctx, areq)
	if errors.Is(err, ipalloc.ErrHeld) && s.releases.waitAll(ctx, heldWait) {
		// The address may be held by a container whose DEL this agent
		// answered and is releasing: those take milliseconds.
		als, err = s.alloc.Allocate(ctx, areq)
	}
	log := s.cfg.Logger.With("pod", req.PodNamespace+"/"+req.PodName, "container_id", req.ContainerID, "interface", req.IfName,
		"duration_seconds", time.Since(start).Seconds())
	if err != nil {
		result := "error"
		if ipalloc.Retryable(err) {
			result = "retry"
		}
		s.metrics.allocation.WithLabelValues(result).Observe(time.Since(start).Seconds())
		log.Warn("ADD failed", "err", err, "retryable", ipalloc.Retryable(err))
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

// errorCode maps an allocation error to a CNI error code.
func errorCode(err error) uint {
	switch {
	case ipalloc.Retryable(err):
		return protocol.CodeTryAgainLater
	case errors.Is(err, ipalloc.ErrBadAnnotation), errors.Is(err, ipalloc.ErrUnknownPool), errors.Is(err, ipalloc.ErrBadPool):
		return protocol.CodeInvalidConfig
	}
	var e *ipalloc.Error
	if errors.As(err, &e) {
		return 100 // allocation refused: exhausted, forbidden, no pool
	}
	return protocol.CodeInternal
}

// countReservation counts a retained app's allocation as a reservation
// hit or miss.
func (s *Server) countReservation(a ipalloc.Allocation) {
	switch {
	case !a.Retained:
	case a.Reused:
		s.metrics.reservations.WithLabelValues("hit").Inc()
	default:
		s.metrics.reservations.WithLabelValues("miss").Inc()
	}
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

// podLocks serializes the ADD and the preparation of one pod, so that the
// two never allocate for it at once.
type podLocks struct {
	mu    sync.Mutex
	locks map[string]*podLock
}

type podLock struct {
	sync.Mutex
	users int
}

func (l *podLocks) lock(namespace, name string) (unlock func()) {
	key := namespace + "/" + name
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[string]*podLock{}
	}
	pl := l.locks[key]
	if pl == nil {
		pl = &podLock{}
		l.locks[key] = pl
	}
	pl.users++
	l.mu.Unlock()
	pl.Lock()
	return func() {
		pl.Unlock()
		l.mu.Lock()
		if pl.users--; pl.users == 0 {
			delete(l.locks, key)
		}
		l.mu.Unlock()
	}
}

// learnedPoolsFile keeps the pools of the last ADD on eth0 next to the
// attachment records, so a restarted agent prepares at once.
func (s *Server) learnedPoolsFile() string {
	return filepath.Join(s.cfg.AttachmentDir, "pools.learned")
}

// learnPools remembers pools, those of an ADD on PrepareInterface, as the
// CNI configuration's.
func (s *Server) learnPools(pools []string) {
	if old := s.learned.Load(); old != nil && slices.Equal(*old, pools) {
		return
	}
	pools = slices.Clone(pools)
	s.learned.Store(&pools)
	data, _ := json.Marshal(pools)
	if err := writeFileAtomic(s.learnedPoolsFile(), data); err != nil {
		s.cfg.Logger.Warn("cannot keep the CNI configuration's pools for the next start", "err", err)
	}
}

// loadPools sets the pools to prepare from at start: those the CNI
// configuration directory shows (it may have changed while the agent was
// down), else those the last ADD on eth0 told before a restart.
func (s *Server) loadPools() {
	if s.poolsFromConfDir() {
		return
	}
	data, err := os.ReadFile(s.learnedPoolsFile())
	if err != nil {
		return
	}
	var pools []string
	if json.Unmarshal(data, &pools) == nil {
		s.learned.Store(&pools)
	}
}

// poolsFromConfDir takes the pools of the default network in CNIConfDir
// if that network uses berth-ipam through this agent, and reports whether
// it did. A new outcome is logged once.
func (s *Server) poolsFromConfDir() bool {
	if s.cfg.CNIConfDir == "" {
		return false
	}
	s.confDir.Lock()
	defer s.confDir.Unlock()
	pools, err := defaultNetworkPools(s.cfg.CNIConfDir, s.cfg.SocketPath)
	if err == nil {
		s.learnPools(pools)
		s.cfg.Logger.Info("preparing addresses from the pools of the CNI configuration", "dir", s.cfg.CNIConfDir, "pools", pools)
		return true
	}
	if msg := err.Error(); msg != s.confDir.last {
		s.confDir.last = msg
		log := s.cfg.Logger.Warn
		if errors.Is(err, errNotBerthIPAM) || errors.Is(err, fs.ErrNotExist) {
			log = s.cfg.Logger.Info
		}
		log("the CNI configuration directory does not tell the pools to prepare addresses from; they come from ADDs on "+PrepareInterface, "err", err)
	}
	return false
}

// releaseUnused releases, in the background, the prepared claims of the
// pod on ifName that its ADD did not use (it asked for other pools).
func (s *Server) releaseUnused(uid types.UID, ifName string, used []ipalloc.Allocation) {
	if ifName != PrepareInterface || uid == "" {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(s.bg, s.cfg.RequestTimeout)
		defer cancel()
		unused := func(c *v1alpha1.IPClaim) bool {
			return c.Spec.Interface == ifName && !slices.ContainsFunc(used, func(a ipalloc.Allocation) bool { return a.Claim == c.Name })
		}
		err := s.releasePrepared(ctx, uid, unused, s.cfg.Logger,
			"released a prepared address the pod's ADD did not use (it asked for other pools)")
		if err != nil {
			s.cfg.Logger.Warn("cannot release the prepared claims the pod's ADD did not use", "pod_uid", uid, "err", err)
		}
	}()
}
