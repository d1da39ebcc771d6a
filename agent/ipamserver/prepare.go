package ipamserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/berth-io/berth/agent/ipam"
	"github.com/berth-io/berth/api/v1alpha1"
)

// Preparing addresses: when a pod is scheduled to the node, the agent
// allocates its addresses on PrepareInterface at once (the claims are
// committed to the API server, Bound to the pod, with no container yet),
// while the runtime still creates the pod's sandbox. The runtime's ADD then
// answers from the cache without an API write, and the container ID is
// recorded on the claims right after the answer (bindLater). Until it is,
// the attachment record names the claims, so a restarted agent records it
// (readAttachments), and DEL, CHECK and GC of that container wait for it.

// PrepareInterface is the interface addresses are prepared for: the one
// kubelet asks the runtime to create for a pod's default network.
const PrepareInterface = "eth0"

// DefaultPrepareWorkers is how many pods are prepared at once.
const DefaultPrepareWorkers = 4

// prepareRetries bounds how often a pod whose preparation waits on
// something (a terminating pod's address, the cache) is tried again; its
// ADD allocates after that.
const prepareRetries = 5

// wantsPrepare reports whether pod is scheduled to node and still waits for
// its sandbox's network.
func wantsPrepare(pod *corev1.Pod, node string) bool {
	return pod.Spec.NodeName == node && pod.DeletionTimestamp == nil && !pod.Spec.HostNetwork &&
		pod.Status.Phase == corev1.PodPending && len(pod.Status.PodIPs) == 0
}

// finished reports whether pod, on node, ended without being deleted
// (e.g. kubelet refused it): a claim prepared for it that no ADD took
// would otherwise be held until someone deletes the pod object.
func finished(pod *corev1.Pod, node string) bool {
	return pod.Spec.NodeName == node && (pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed)
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

// bindLater records the container of att (and its network) on att's
// prepared claims in the background, retrying with backoff while the API
// server fails, until the container's DEL cancels it or the server stops
// (then the next Start does it from the attachment record).
func (s *Server) bindLater(pod string, att attachment) {
	containerID := att.ContainerID
	e := &pendingEntry{container: containerID, pod: pod, uid: att.PodUID, claims: att.Claims}
	s.later(&s.binds, e, containerID, func() {
		start := time.Now()
		// A dual-stack pod's two claims are recorded at once.
		var wg sync.WaitGroup
		for _, name := range att.Claims {
			wg.Go(func() {
				s.keepTrying(e, "cannot record the container on its prepared claim; retrying", func(ctx context.Context) error {
					err := s.alloc.BindContainer(ctx, name, att.PodUID, containerID, att.Network)
					if errors.Is(err, ipam.ErrNotPrepared) && !e.canceled.Load() {
						s.staleAnswer(pod, att.PodUID, containerID, name, err)
						return nil
					}
					return err
				}, "claim", name, "container_id", containerID)
			})
		}
		wg.Wait()
		s.cfg.Logger.Debug("recorded the container on its prepared claims", "container_id", containerID, "claims", att.Claims,
			"duration_seconds", time.Since(start).Seconds())
	})
}

// staleAnswer reports a prepared answer that turned stale: the ADD answered
// with a prepared claim that was changed (reserved, freed or taken) before
// the container was recorded on it, so the pod may run on an address the
// API no longer gives it. A Warning Event on the pod, a metric and a log.
func (s *Server) staleAnswer(pod string, uid types.UID, containerID, claim string, err error) {
	s.metrics.prepared.WithLabelValues("stale").Inc()
	s.cfg.Logger.Warn("prepared claim changed before its container was recorded", "claim", claim, "container_id", containerID, "pod", pod, "err", err)
	if s.cfg.Recorder == nil {
		return
	}
	ns, name, _ := strings.Cut(pod, "/")
	obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: uid}}
	s.cfg.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, "PreparedAddressStale", "BindContainer",
		"the address berth-ipam answered from claim %s was changed by someone else before the container was recorded on it (%v); "+
			"the pod may share it with another: delete the pod so that it gets a new one", claim, err)
}

// later runs work in the background, tracked in p under key, once one of
// p's workers is free; not at all if the server stops first.
func (s *Server) later(p *pendingWork, e *pendingEntry, key string, work func()) {
	done := p.start(e, key)
	go func() {
		defer done()
		defer s.parts.Recover(PartServer, s.cfg.Logger, nil)
		select {
		case p.sem <- struct{}{}:
			defer func() { <-p.sem }()
		case <-s.bg.Done():
			return
		}
		work()
	}()
}

// keepTrying runs write until it succeeds, e is canceled or the server
// stops, waiting 50ms after the first failure and doubling up to 5s; each
// failure is logged at warn with msg and attrs. It reports whether write
// succeeded.
func (s *Server) keepTrying(e *pendingEntry, msg string, write func(context.Context) error, attrs ...any) bool {
	backoff := wait.Backoff{Duration: 50 * time.Millisecond, Factor: 2, Cap: 5 * time.Second, Steps: 1 << 30}
	for !e.canceled.Load() {
		ctx, cancel := context.WithTimeout(s.bg, s.cfg.RequestTimeout)
		err := write(ctx)
		cancel()
		switch {
		case err == nil:
			return true
		case e.canceled.Load():
			return false // e.g. the DEL released the claim under this write
		}
		s.cfg.Logger.Warn(msg, append(attrs, "err", err)...)
		select {
		case <-s.bg.Done():
			return false
		case <-time.After(backoff.Step()):
		}
	}
	return false
}

// readAttachments reads the attachment records an earlier run of the
// agent left, before the socket is served. It records the containers of
// prepared claims that run answered ADD for but stopped before recording
// them. And it counts each container whose record is younger than gcGrace
// as a recent ADD, from the record's time, so that CNI GC keeps off it
// across the restart too (a runtime lists its sandboxes, an ADD ends, the
// agent restarts, then the runtime's GC arrives without the new sandbox).
func (s *Server) readAttachments(ctx context.Context) error {
	files, err := filepath.Glob(filepath.Join(s.cfg.AttachmentDir, "*.json"))
	if err != nil {
		return fmt.Errorf("attachment records: %w", err)
	}
	now := time.Now()
	for _, f := range files {
		fi, err := os.Stat(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("attachment record %s: %w", f, err)
		}
		data, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("attachment record %s: %w", f, err)
		}
		a, err := decodeAttachment(data)
		if err != nil {
			continue // unreadable: nothing to keep or record
		}
		if t := fi.ModTime(); a.ContainerID != "" && now.Sub(t) < gcGrace {
			s.mu.Lock()
			if t.After(s.recent[a.ContainerID]) {
				s.recent[a.ContainerID] = t
			}
			s.mu.Unlock()
		}
		if a.PodUID == "" {
			continue // not from a prepared ADD: nothing to record
		}
		for _, name := range a.Claims {
			err := s.alloc.BindContainer(ctx, name, a.PodUID, a.ContainerID, a.Network)
			if errors.Is(err, ipam.ErrNotPrepared) {
				continue // released or moved on since
			}
			if err != nil {
				return fmt.Errorf("attachment record %s: %w", f, err)
			}
		}
	}
	return nil
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

// preparer prepares the addresses of the pods scheduled to the node.
type preparer struct {
	s     *Server
	queue workqueue.TypedRateLimitingInterface[types.NamespacedName]

	mu   sync.Mutex
	done map[types.UID]bool // pods prepared or given up on; forgotten when the pod is deleted
}

func (s *Server) runPreparer(ctx context.Context) error {
	p := &preparer{s: s, done: map[types.UID]bool{},
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[types.NamespacedName]())}
	inf, err := s.cfg.PodCache.GetInformer(ctx, &corev1.Pod{})
	if err != nil {
		return err
	}
	on := func(obj any) {
		if pod, ok := obj.(*corev1.Pod); ok && (wantsPrepare(pod, s.cfg.Node) && !p.isDone(pod.UID) || finished(pod, s.cfg.Node) ||
			s.startedWithout(pod)) {
			p.queue.Add(types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name})
		}
	}
	reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: on, UpdateFunc: func(_, n any) { on(n) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				p.mu.Lock()
				delete(p.done, pod.UID)
				p.mu.Unlock()
			}
		},
	})
	if err != nil {
		return err
	}
	defer func() { _ = inf.RemoveEventHandler(reg) }() // a run after a panic adds its own
	go func() { <-ctx.Done(); p.queue.ShutDown() }()
	var wg sync.WaitGroup
	for range s.cfg.PrepareWorkers {
		wg.Go(func() {
			for {
				key, quit := p.queue.Get()
				if quit {
					return
				}
				if err := p.prepareRecovering(ctx, key); err != nil && p.queue.NumRequeues(key) < prepareRetries {
					p.queue.AddRateLimited(key)
				} else {
					p.queue.Forget(key)
				}
				p.queue.Done(key)
			}
		})
	}
	wg.Wait()
	return nil
}

// prepareRecovering is prepare, with a panic recovered, counted and
// returned.
func (p *preparer) prepareRecovering(ctx context.Context, key types.NamespacedName) (err error) {
	defer p.s.parts.Recover(PartPreparer, p.s.cfg.Logger, &err)
	return p.prepare(ctx, key)
}

func (p *preparer) isDone(uid types.UID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done[uid]
}

func (p *preparer) markDone(uid types.UID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done[uid] = true
}

// prepare allocates one pod's addresses; an error asks for a retry.
func (p *preparer) prepare(ctx context.Context, key types.NamespacedName) error {
	s := p.s
	pools := s.learned.Load()
	if pools == nil && s.poolsFromConfDir() {
		pools = s.learned.Load()
	}
	if pools == nil {
		return nil // which pools the CNI configuration names is unknown until an ADD on eth0
	}
	unlock := s.locks.lock(key.Namespace, key.Name)
	defer unlock()
	pod, err := s.cfg.Store.Pod(key.Namespace, key.Name)
	switch {
	case err == nil && finished(pod, s.cfg.Node):
		return s.releaseUntaken(ctx, pod, func(*v1alpha1.IPClaim) bool { return true },
			"released a prepared address: its pod ended without taking it")
	case err == nil && s.startedWithout(pod):
		return s.releaseUntaken(ctx, pod, notPodIP(pod),
			"released a prepared address: its pod started with addresses of another network")
	}
	if err != nil || !wantsPrepare(pod, s.cfg.Node) || p.isDone(pod.UID) {
		return nil // gone, started, or handled already
	}
	if mine, err := s.cfg.Store.ClaimsOfPod(pod.UID); err != nil || len(mine) > 0 {
		p.markDone(pod.UID) // its ADD came first (or the cache fails: leave it to ADD)
		return nil
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	// A DEL of the pod's earlier sandbox may still be releasing its claims.
	if err := s.releases.wait(ctx, key.String(), pod.UID, ""); err != nil {
		return err
	}
	als, err := s.alloc.Prepare(ctx, ipam.Request{IfName: PrepareInterface, PodNamespace: pod.Namespace, PodName: pod.Name,
		PodUID: pod.UID, Pools: *pools})
	log := s.cfg.Logger.With("pod", key.String(), "pod_uid", pod.UID, "duration_seconds", time.Since(start).Seconds())
	if err != nil {
		if ipam.Retryable(err) {
			log.Debug("cannot prepare the pod's addresses yet", "err", err)
			return err
		}
		// Its ADD meets the same error and reports it on the pod.
		p.markDone(pod.UID)
		s.metrics.prepared.WithLabelValues("error").Inc()
		log.Debug("cannot prepare the pod's addresses; its ADD allocates", "err", err)
		return nil
	}
	p.markDone(pod.UID)
	s.metrics.prepared.WithLabelValues("ok").Inc()
	for _, a := range als {
		s.countReservation(a)
		log.Info("prepared", "address", a.Address.String(), "pool", a.Pool, "claim", a.Claim, "retained", a.Retained, "reused", a.Reused)
	}
	return nil
}

// releaseUntaken releases the claims prepared for pod that no ADD took
// and which selects (a pod that ended, or started on another network),
// once any recording of a container on them is done. Called with the
// pod's lock.
func (s *Server) releaseUntaken(ctx context.Context, pod *corev1.Pod, which func(*v1alpha1.IPClaim) bool, msg string) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	if err := s.waitPending(ctx, pod.Namespace+"/"+pod.Name, pod.UID, ""); err != nil {
		return err
	}
	log := s.cfg.Logger.With("pod", pod.Namespace+"/"+pod.Name, "phase", pod.Status.Phase)
	return s.releasePrepared(ctx, pod.UID, which, log, msg)
}

// startedWithout reports whether pod, on this node, has its network
// (kubelet reports its IPs) while a claim prepared for it on
// PrepareInterface is not among them and no ADD took it: the pod's
// default network is not berth-ipam's (a node whose pods choose their
// network, e.g. through Multus), so the claim would be held for nothing
// until the pod ends.
func (s *Server) startedWithout(pod *corev1.Pod) bool {
	if pod.Spec.NodeName != s.cfg.Node || pod.Spec.HostNetwork || len(pod.Status.PodIPs) == 0 {
		return false
	}
	claims, err := s.cfg.Store.ClaimsOfPod(pod.UID)
	if err != nil {
		return false
	}
	other := notPodIP(pod)
	return slices.ContainsFunc(claims, func(c *v1alpha1.IPClaim) bool {
		return untaken(c, s.cfg.Node) && c.Spec.Interface == PrepareInterface && other(c)
	})
}

// notPodIP selects the claims whose address is none of pod's IPs.
func notPodIP(pod *corev1.Pod) func(*v1alpha1.IPClaim) bool {
	return func(c *v1alpha1.IPClaim) bool {
		a, err := netip.ParseAddr(c.Spec.Address)
		return err == nil && !slices.ContainsFunc(pod.Status.PodIPs, func(ip corev1.PodIP) bool {
			b, err := netip.ParseAddr(ip.IP)
			return err == nil && a == b
		})
	}
}

// untaken reports whether c is a claim prepared on node that no ADD took:
// Bound, with no container.
func untaken(c *v1alpha1.IPClaim, node string) bool {
	return c.Spec.ContainerID == "" && c.Spec.Node == node && c.Spec.State == v1alpha1.ClaimBound
}

// releasePrepared releases those of the pod's claims on this node that
// are Bound with no container (prepared, taken by no ADD) and that which
// selects, logging msg for each.
func (s *Server) releasePrepared(ctx context.Context, uid types.UID, which func(*v1alpha1.IPClaim) bool, log *slog.Logger, msg string) error {
	claims, err := s.cfg.Store.ClaimsOfPod(uid)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range claims {
		if !untaken(c, s.cfg.Node) || !which(c) {
			continue
		}
		if err := s.alloc.ReleasePrepared(ctx, c.Name, uid); err != nil {
			errs = append(errs, err)
			continue
		}
		s.metrics.prepared.WithLabelValues("released").Inc()
		log.Info(msg, "pod_uid", uid, "address", c.Spec.Address, "claim", c.Name)
	}
	return errors.Join(errs...)
}

// releaseUnused releases, in the background, the prepared claims of the
// pod on ifName that its ADD did not use (it asked for other pools).
func (s *Server) releaseUnused(uid types.UID, ifName string, used []ipam.Allocation) {
	if ifName != PrepareInterface || uid == "" {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(s.bg, s.cfg.RequestTimeout)
		defer cancel()
		unused := func(c *v1alpha1.IPClaim) bool {
			return c.Spec.Interface == ifName && !slices.ContainsFunc(used, func(a ipam.Allocation) bool { return a.Claim == c.Name })
		}
		err := s.releasePrepared(ctx, uid, unused, s.cfg.Logger,
			"released a prepared address the pod's ADD did not use (it asked for other pools)")
		if err != nil {
			s.cfg.Logger.Warn("cannot release the prepared claims the pod's ADD did not use", "pod_uid", uid, "err", err)
		}
	}()
}
