package ipamserver

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/ipalloc"
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
	als, err := s.alloc.Prepare(ctx, ipalloc.Request{IfName: PrepareInterface, PodNamespace: pod.Namespace, PodName: pod.Name,
		PodUID: pod.UID, Pools: *pools})
	log := s.cfg.Logger.With("pod", key.String(), "pod_uid", pod.UID, "duration_seconds", time.Since(start).Seconds())
	if err != nil {
		if ipalloc.Retryable(err) {
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
