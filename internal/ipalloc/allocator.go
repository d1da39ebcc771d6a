package ipalloc

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/api/v1alpha1"
)

// Config configures an Allocator.
type Config struct {
	// Store is read and written. Required.
	Store Store
	// Node is the node the allocator serves, recorded on claims. Required.
	Node string
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// MaxConflicts bounds how often one allocation retries after losing a
	// race for an address. Default 32.
	MaxConflicts int
}

// Allocator hands out addresses. It keeps no state: a new Allocator over the
// same Store (an agent restart) carries on where the old one stopped.
type Allocator struct {
	cfg   Config
	pools poolCache
}

// New validates cfg and returns an Allocator.
func New(cfg Config) (*Allocator, error) {
	if cfg.Store == nil {
		return nil, errors.New("ipam: no store")
	}
	if cfg.Node == "" {
		return nil, errors.New("ipam: no node name")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxConflicts == 0 {
		cfg.MaxConflicts = 32
	}
	return &Allocator{cfg: cfg}, nil
}

// Request is one CNI ADD (or CHECK) as the allocator needs it.
type Request struct {
	ContainerID  string
	IfName       string
	PodNamespace string
	PodName      string
	// PodUID, when the runtime passes it, must match the pod found.
	PodUID types.UID
	// Pools from the CNI configuration, used when neither the pod nor its
	// namespace names any.
	Pools []string
	// Network is the CNI network's name, recorded on the claims.
	Network string
}

func (r Request) pod() string { return r.PodNamespace + "/" + r.PodName }

// Allocation is one address given to a pod.
type Allocation struct {
	Pool    string
	Claim   string
	PodUID  types.UID    // the pod the claim is bound to
	Address netip.Prefix // the address with the pool's prefix length
	Gateway netip.Addr   // invalid: none
	Routes  []Route
	// Retained is whether the address is kept for the pod's app after it.
	Retained bool
	// Reused is whether the address came from the app's reserve (a
	// reservation hit) rather than fresh from the pool.
	Reused bool
	// Repeated is whether the pod held the address already (a repeated
	// ADD, a new sandbox of the same pod, or a prepared claim).
	Repeated bool
	// Prepared is whether the address was allocated by Prepare before the
	// runtime's ADD: the claim does not record the container yet, and the
	// caller records it with BindContainer.
	Prepared bool
	// Reclaimed is whether the address was reserved for another app,
	// PreviousApp, and taken over because the pool had no free address
	// (spec.reclaimReservations).
	Reclaimed   bool
	PreviousApp *v1alpha1.App
}

// Allocate gives the pod one address from each of its pools (one per IP
// family). Calling it again for the same pod and interface returns the same
// addresses. On error nothing is left claimed.
func (a *Allocator) Allocate(ctx context.Context, req Request) ([]Allocation, error) {
	pod, err := a.cfg.Store.Pod(req.PodNamespace, req.PodName)
	if errors.Is(err, ErrNotFound) {
		return nil, newError(req.pod(), "", ErrPodUnknown, "no such pod (yet)")
	}
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", req.pod(), err)
	}
	if req.PodUID != "" && pod.UID != req.PodUID {
		if live, ok := a.cfg.Store.(interface {
			LivePod(namespace, name string) (*corev1.Pod, error)
		}); ok {
			if p, err := live.LivePod(req.PodNamespace, req.PodName); err == nil {
				pod = p
			}
		}
	}
	if req.PodUID != "" && pod.UID != req.PodUID {
		return nil, newError(req.pod(), "", ErrPodUnknown, "the pod found has UID %s, the runtime asks for %s (not seen yet)", pod.UID, req.PodUID)
	}
	if pod.DeletionTimestamp != nil {
		return nil, newError(req.pod(), "", ErrForbidden, "the pod is being deleted")
	}
	ns, err := a.cfg.Store.Namespace(pod.Namespace)
	if err != nil {
		return nil, fmt.Errorf("pod %s: namespace: %w", req.pod(), err)
	}
	pools, err := poolsFor(a.cfg.Store, pod, ns, req.Pools)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.Pod = req.pod()
			return nil, e
		}
		return nil, fmt.Errorf("pod %s: %w", req.pod(), err)
	}
	app, err := AppOf(a.cfg.Store, pod)
	if err != nil {
		if errors.Is(err, ErrBadAnnotation) {
			return nil, newError(req.pod(), "", ErrBadAnnotation, "%v", err)
		}
		return nil, fmt.Errorf("pod %s: %w", req.pod(), err)
	}

	var out []Allocation
	for _, p := range pools {
		al, err := a.allocateFrom(ctx, req, pod, p, app)
		if err != nil {
			for _, done := range out {
				// Best effort: a leftover claim of this container is
				// released by the runtime's DEL, which follows a failed ADD.
				_ = a.releaseClaim(ctx, done.Claim, req.ContainerID)
			}
			return nil, err
		}
		out = append(out, al)
	}
	return out, nil
}

func (a *Allocator) allocateFrom(ctx context.Context, req Request, pod *corev1.Pod, p *v1alpha1.IPPool, app *v1alpha1.App) (Allocation, error) {
	pool, err := a.pools.get(p)
	if err != nil {
		return Allocation{}, newError(req.pod(), p.Name, ErrBadPool, "%v", err)
	}
	all, err := a.cfg.Store.Pools()
	if err != nil {
		return Allocation{}, fmt.Errorf("pod %s: pools: %w", req.pod(), err)
	}
	if err := OverlapError(p, pool, all, a.pools.get); err != nil {
		return Allocation{}, newError(req.pod(), p.Name, ErrBadPool, "%v", err)
	}
	if !pool.Retain {
		app = nil
	}
	for attempt := 0; attempt < a.cfg.MaxConflicts; attempt++ {
		al, err := a.tryAllocate(ctx, req, pod, pool, app)
		if errors.Is(err, ErrConflict) || errors.Is(err, ErrExists) {
			continue
		}
		return al, err
	}
	return Allocation{}, newError(req.pod(), pool.Name, ErrTooManyRetries, "lost the race for an address %d times", a.cfg.MaxConflicts)
}

func (a *Allocator) tryAllocate(ctx context.Context, req Request, pod *corev1.Pod, pool *Pool, app *v1alpha1.App) (Allocation, error) {
	s := a.cfg.Store
	// 1. Idempotent: the pod already holds an address of the pool on this
	// interface (a repeated ADD, or a new sandbox of the same pod).
	mine, err := s.ClaimsOfPod(pod.UID)
	if err != nil {
		return Allocation{}, fmt.Errorf("pod %s: claims: %w", req.pod(), err)
	}
	for _, c := range mine {
		if c.Spec.Pool != pool.Name || c.Spec.Interface != req.IfName || c.Spec.State == v1alpha1.ClaimReserved || c.Spec.State == v1alpha1.ClaimConflict {
			continue // released, or another host answered for it: not the pod's any more
		}
		switch {
		case req.ContainerID == "":
			// Preparing, and the pod holds one already: nothing to do.
		case c.Spec.ContainerID == "" && c.Spec.Node == a.cfg.Node && c.Spec.State == v1alpha1.ClaimBound:
			// Prepared for this pod before its sandbox existed.
			al, err := a.allocation(pool, c, false)
			al.Repeated, al.Prepared = true, true
			return al, err
		case c.Spec.ContainerID != req.ContainerID || c.Spec.Node != a.cfg.Node || c.Spec.Network != req.Network:
			c = c.DeepCopy()
			c.Spec.ContainerID, c.Spec.Node, c.Spec.Network = req.ContainerID, a.cfg.Node, req.Network
			if c.Labels == nil {
				c.Labels = map[string]string{}
			}
			c.Labels[v1alpha1.LabelNode] = a.cfg.Node
			if err := s.Update(ctx, c); err != nil {
				return Allocation{}, err
			}
		}
		al, err := a.allocation(pool, c, false)
		al.Repeated = true
		return al, err
	}

	// 2. The app's reserve.
	if app != nil {
		claims, err := s.ClaimsOfApp(pool.Name, *app)
		if err != nil {
			return Allocation{}, fmt.Errorf("pod %s: claims of app: %w", req.pod(), err)
		}
		if app.Ordinal != nil {
			// A StatefulSet pod gets its ordinal's address back, and only it.
			for _, c := range claims {
				if c.Spec.App.Ordinal == nil || *c.Spec.App.Ordinal != *app.Ordinal || c.Spec.State == v1alpha1.ClaimConflict {
					// Another ordinal's, or in conflict: the ordinal then
					// gets a fresh address, retained for it from then on.
					continue
				}
				if c.Spec.State != v1alpha1.ClaimReserved {
					return Allocation{}, a.held(req, pool, c)
				}
				al, err := a.take(ctx, req, pod, pool, app, c)
				if errors.Is(err, ErrNotFound) {
					// Freed since the cache read it (its reservation ended, or
					// another app reclaimed it and released it): look again.
					return Allocation{}, fmt.Errorf("claim %s: %w", c.Name, ErrConflict)
				}
				return al, err
			}
		} else {
			var reserved, held []*v1alpha1.IPClaim
			for _, c := range claims {
				switch {
				case c.Spec.State == v1alpha1.ClaimConflict:
					// Out of use until its quarantine ends.
				case c.Spec.State == v1alpha1.ClaimReserved:
					reserved = append(reserved, c)
				case !a.podLive(c):
					held = append(held, c)
				}
			}
			// Start at a point derived from the pod's UID: concurrent pods of
			// one app then rarely race for the same reserved address.
			sortClaims(reserved)
			off := 0
			if len(reserved) > 0 {
				off = int(hash(string(pod.UID)) % uint64(len(reserved)))
			}
			for i := range reserved {
				c := reserved[(off+i)%len(reserved)]
				al, err := a.take(ctx, req, pod, pool, app, c)
				if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
					continue // another pod of the app took it first
				}
				return al, err
			}
			if len(held) > 0 {
				// The app's live pods would not exceed its addresses with
				// this one: wait for a teardown rather than take a fresh one.
				sortClaims(held)
				return Allocation{}, a.held(req, pool, held[0])
			}
		}
	}

	// 3. A fresh address.
	return a.fresh(ctx, req, pod, pool, app)
}

// held is the retryable error for a candidate still held by another pod.
func (a *Allocator) held(req Request, pool *Pool, c *v1alpha1.IPClaim) error {
	who := c.Spec.Pod.Namespace + "/" + c.Spec.Pod.Name
	state := "is terminating"
	if p, err := a.cfg.Store.Pod(c.Spec.Pod.Namespace, c.Spec.Pod.Name); err != nil || p.UID != c.Spec.Pod.UID {
		state = "is deleted but its network was not torn down yet (CNI DEL pending; the agent of its node releases the address once the runtime has no sandbox of it, or berth-controller once that agent has been silent past its grace period)"
	} else if p.DeletionTimestamp == nil {
		state = "is running"
	}
	return newError(req.pod(), pool.Name, ErrHeld,
		"address %s of the pod's app is still held by pod %s (uid %s), which %s; retrying until its teardown ends",
		c.Spec.Address, who, c.Spec.Pod.UID, state)
}

// podLive reports whether the claim's pod exists and is not terminating.
func (a *Allocator) podLive(c *v1alpha1.IPClaim) bool {
	p, err := a.cfg.Store.Pod(c.Spec.Pod.Namespace, c.Spec.Pod.Name)
	if err != nil || p.UID != c.Spec.Pod.UID || p.DeletionTimestamp != nil {
		return false
	}
	return p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// take binds a Reserved claim of the app to the pod, at the claim's
// resourceVersion.
func (a *Allocator) take(ctx context.Context, req Request, pod *corev1.Pod, pool *Pool, app *v1alpha1.App, c *v1alpha1.IPClaim) (Allocation, error) {
	if addr, err := netip.ParseAddr(c.Spec.Address); err != nil || !pool.Contains(addr) {
		return Allocation{}, ErrConflict // no longer in the pool: skip it
	}
	c = c.DeepCopy()
	a.bind(c, req, pod, app)
	if err := a.cfg.Store.Update(ctx, c); err != nil {
		return Allocation{}, err
	}
	return a.allocation(pool, c, true)
}

func (a *Allocator) bind(c *v1alpha1.IPClaim, req Request, pod *corev1.Pod, app *v1alpha1.App) {
	c.Spec.Pod = v1alpha1.PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}
	c.Spec.ContainerID, c.Spec.Interface, c.Spec.Node, c.Spec.Network = req.ContainerID, req.IfName, a.cfg.Node, req.Network
	c.Spec.State, c.Spec.ReservedUntil = v1alpha1.ClaimBound, nil
	if app != nil {
		c.Spec.App = app.DeepCopy()
	}
	if c.Labels == nil {
		c.Labels = map[string]string{}
	}
	c.Labels[v1alpha1.LabelPool] = c.Spec.Pool
	c.Labels[v1alpha1.LabelNode] = a.cfg.Node
	c.Labels[v1alpha1.LabelPodUID] = string(pod.UID)
}

// fresh creates the claim of a free address, starting the scan at a point
// derived from the pod's UID so that concurrent allocators rarely collide.
func (a *Allocator) fresh(ctx context.Context, req Request, pod *corev1.Pod, pool *Pool, app *v1alpha1.App) (Allocation, error) {
	size := pool.Size()
	start := hash(string(pod.UID)+"/"+req.IfName) % size
	taken := 0
	for i := uint64(0); i < size; i++ {
		addr := pool.At((start + i) % size)
		name := v1alpha1.ClaimName(pool.Name, addr)
		if _, err := a.cfg.Store.Claim(name); err == nil {
			taken++
			continue
		} else if !errors.Is(err, ErrNotFound) {
			return Allocation{}, fmt.Errorf("claim %s: %w", name, err)
		}
		// Claimed in another pool: one being deleted, or whose ranges
		// were narrowed under its pods (overlapping live pools are refused
		// before this). The cache may lag: soleClaim, after the create,
		// is the check that does not.
		if others, err := a.cfg.Store.ClaimsOfAddress(addr.String()); err != nil {
			return Allocation{}, fmt.Errorf("claims of %s: %w", addr, err)
		} else if len(others) > 0 {
			taken++
			continue
		}
		c := &v1alpha1.IPClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       v1alpha1.IPClaimSpec{Pool: pool.Name, Address: addr.String()},
		}
		a.bind(c, req, pod, app)
		err := a.cfg.Store.Create(ctx, c)
		if errors.Is(err, ErrExists) {
			taken++
			continue // the cache had not seen it yet
		}
		if err != nil {
			return Allocation{}, fmt.Errorf("pod %s, pool %s: claim %s: %w", req.pod(), pool.Name, name, err)
		}
		if sole, err := a.soleClaim(ctx, req, pool, c); err != nil {
			return Allocation{}, err
		} else if !sole {
			taken++
			continue // another pool's claim has the address
		}
		return a.allocation(pool, c, false)
	}
	if !pool.Reclaim {
		return Allocation{}, newError(req.pod(), pool.Name, ErrExhausted,
			"all %d addresses are bound or reserved for apps (reservations end after %s; reclaimReservations is off)", size, pool.TTL)
	}
	return a.reclaim(ctx, req, pod, pool, app)
}

// soleClaim is the lock across pools, for claim c of a fresh address just
// created in pool. A claim's name is per pool and address, so the API
// server admits one claim of an address per pool only. Pools must not
// overlap, but admission reads the other pools from its cache and the
// allocator reads pools and claims from the agent's: two pools created (or
// edited) into overlap at once, or caches that lag, could let two pools'
// claims of one address through. So the address's claims are read from
// the API server after the create, as of c's resourceVersion or later: if
// another pool's exists, c is deleted at its resourceVersion and soleClaim
// reports false (try the next address). Of two claims of one address
// created concurrently, the read after the later create sees the earlier
// claim (unless its creator deleted it already), so at most one is kept
// (both may back off). A failed read deletes c too and returns the error.
func (a *Allocator) soleClaim(ctx context.Context, req Request, pool *Pool, c *v1alpha1.IPClaim) (bool, error) {
	others, err := a.cfg.Store.LiveClaimsOfAddress(ctx, c.Spec.Address, c.ResourceVersion)
	if err != nil {
		err = fmt.Errorf("pod %s, pool %s: claim %s: other pools' claims of %s: %w", req.pod(), pool.Name, c.Name, c.Spec.Address, err)
		if derr := a.cfg.Store.Delete(ctx, c); derr != nil {
			// Not wrapped: a conflict here must not read as a lost race,
			// whose retry would hand out this unchecked claim.
			return false, fmt.Errorf("%w; and deleting the claim: %s", err, derr.Error())
		}
		return false, err
	}
	for _, o := range others {
		if o.Name == c.Name {
			continue
		}
		err := a.cfg.Store.Delete(ctx, c)
		if errors.Is(err, ErrConflict) {
			// Changed since our create (its pod is going, and whoever
			// releases it is at work): the address is not ours to use.
			return false, newError(req.pod(), pool.Name, ErrTooManyRetries,
				"claim %s: pool %s's claim %s has address %s too, and ours changed before we could delete it: %v", c.Name, o.Spec.Pool, o.Name, c.Spec.Address, err)
		}
		if err != nil {
			return false, fmt.Errorf("pod %s, pool %s: claim %s: delete (pool %s's claim %s has address %s too): %w",
				req.pod(), pool.Name, c.Name, o.Spec.Pool, o.Name, c.Spec.Address, err)
		}
		return false, nil
	}
	return true, nil
}

// reclaim takes over the Reserved claim of another app whose reservation
// ends soonest (ties: the lowest address), at the claim's resourceVersion;
// a lost race tries the next. Bound and Releasing claims are never
// candidates (their address may be on a pod's interface), nor the
// reservations of the pod's own app (its reserve was tried before).
func (a *Allocator) reclaim(ctx context.Context, req Request, pod *corev1.Pod, pool *Pool, app *v1alpha1.App) (Allocation, error) {
	reserved, err := a.cfg.Store.ReservedClaims(pool.Name)
	if err != nil {
		return Allocation{}, fmt.Errorf("pod %s, pool %s: reserved claims: %w", req.pod(), pool.Name, err)
	}
	own := ""
	if owner := a.ownerApp(pod, app); owner != nil {
		own = AppKey(pool.Name, *owner)
	}
	type candidate struct {
		c     *v1alpha1.IPClaim
		addr  netip.Addr
		until time.Time // zero: no end recorded, the controller frees it now
	}
	var cands []candidate
	for _, c := range reserved {
		if c.Spec.Pool != pool.Name || c.Spec.State != v1alpha1.ClaimReserved {
			continue
		}
		if own != "" && c.Spec.App != nil && AppKey(c.Spec.Pool, *c.Spec.App) == own {
			continue
		}
		addr, err := netip.ParseAddr(c.Spec.Address)
		if err != nil || !pool.Contains(addr) {
			continue
		}
		cd := candidate{c: c, addr: addr}
		if c.Spec.ReservedUntil != nil {
			cd.until = c.Spec.ReservedUntil.Time
		}
		cands = append(cands, cd)
	}
	sort.Slice(cands, func(i, j int) bool {
		if !cands[i].until.Equal(cands[j].until) {
			return cands[i].until.Before(cands[j].until)
		}
		return cands[i].addr.Less(cands[j].addr)
	})
	lost := false
	for _, cd := range cands {
		c := cd.c.DeepCopy()
		a.bind(c, req, pod, app)
		c.Spec.App = app.DeepCopy() // nil when the pod's address is not retained
		err := a.cfg.Store.Update(ctx, c)
		if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
			lost = true // taken back by its app, reclaimed elsewhere, or freed
			continue
		}
		if err != nil {
			return Allocation{}, fmt.Errorf("pod %s, pool %s: reclaim claim %s: %w", req.pod(), pool.Name, c.Name, err)
		}
		al, err := a.allocation(pool, c, false)
		al.Reclaimed, al.PreviousApp = true, cd.c.Spec.App.DeepCopy()
		return al, err
	}
	if lost {
		// Each candidate changed under us; one may be free by now: start over.
		return Allocation{}, fmt.Errorf("pool %s: reclaim: %w", pool.Name, ErrConflict)
	}
	return Allocation{}, newError(req.pod(), pool.Name, ErrExhausted,
		"all %d addresses are held by pods or reserved for the pod's own app: no other app's reservation is left to reclaim", pool.Size())
}

// ownerApp is the app whose reservations the pod must leave alone: its
// app, or for a pod that opted out (berth.io/ip-retain: "false") the app
// it would have had, whose next pods expect those addresses back.
func (a *Allocator) ownerApp(pod *corev1.Pod, app *v1alpha1.App) *v1alpha1.App {
	if app != nil || pod.Annotations[v1alpha1.AnnotationRetain] != "false" {
		return app
	}
	p := pod.DeepCopy()
	delete(p.Annotations, v1alpha1.AnnotationRetain)
	owner, err := AppOf(a.cfg.Store, p)
	if err != nil {
		return nil
	}
	return owner
}

func (a *Allocator) allocation(pool *Pool, c *v1alpha1.IPClaim, reused bool) (Allocation, error) {
	addr, err := netip.ParseAddr(c.Spec.Address)
	if err != nil {
		return Allocation{}, fmt.Errorf("claim %s: address %q: %w", c.Name, c.Spec.Address, err)
	}
	return Allocation{
		Pool: pool.Name, Claim: c.Name, PodUID: c.Spec.Pod.UID, Address: netip.PrefixFrom(addr, pool.Prefix.Bits()),
		Gateway: pool.Gateway, Routes: pool.Routes, Retained: c.Spec.App != nil, Reused: reused,
	}, nil
}

// Prepare allocates the pod's addresses on req.IfName before the runtime
// asks (req.ContainerID must be empty): the claims are committed, Bound to
// the pod with no container yet, and the pod's ADD for that interface then
// gets them without an API write (Allocation.Prepared). A pod that holds an
// address of a pool already gets it back. Errors are those of Allocate.
func (a *Allocator) Prepare(ctx context.Context, req Request) ([]Allocation, error) {
	if req.ContainerID != "" {
		return nil, fmt.Errorf("pod %s: prepare: a container ID (%s) is set", req.pod(), req.ContainerID)
	}
	return a.Allocate(ctx, req)
}

// ErrNotPrepared is returned by BindContainer when the claim is no longer
// a prepared claim of the pod.
var ErrNotPrepared = errors.New("not a prepared claim of the pod")

// BindContainer records containerID and its CNI network on a claim Prepare
// made for the pod uid, at the claim's resourceVersion (retrying
// conflicts). Recording them again is not an error; a claim gone, or held
// by another pod or container, is ErrNotPrepared.
func (a *Allocator) BindContainer(ctx context.Context, name string, uid types.UID, containerID, network string) error {
	for attempt := 0; attempt < a.cfg.MaxConflicts; attempt++ {
		c, err := a.cfg.Store.Claim(name)
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("claim %s: %w (it is gone)", name, ErrNotPrepared)
		}
		if err != nil {
			return fmt.Errorf("claim %s: %w", name, err)
		}
		switch {
		case c.Spec.Pod.UID != uid || c.Spec.State != v1alpha1.ClaimBound:
			return fmt.Errorf("claim %s: %w (now %s by pod uid %s)", name, ErrNotPrepared, c.Spec.State, c.Spec.Pod.UID)
		case c.Spec.ContainerID == containerID && c.Spec.Network == network:
			return nil
		case c.Spec.ContainerID != "" && c.Spec.ContainerID != containerID:
			return fmt.Errorf("claim %s: %w (container %s holds it)", name, ErrNotPrepared, c.Spec.ContainerID)
		}
		c = c.DeepCopy()
		c.Spec.ContainerID, c.Spec.Network = containerID, network
		err = a.cfg.Store.Update(ctx, c)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("claim %s: record container %s: %w", name, containerID, err)
		}
		return nil
	}
	return fmt.Errorf("claim %s: record container %s: %w", name, containerID, ErrTooManyRetries)
}

// ReleasePrepared releases a claim Prepare made for the pod uid that
// records no container: no ADD took it (it asked for other pools), or the
// container's DEL came before BindContainer. A claim that records a
// container by now, or is another pod's, is left alone.
func (a *Allocator) ReleasePrepared(ctx context.Context, name string, uid types.UID) error {
	return a.release(ctx, name, preparedFor(uid))
}

// Release ends the container's hold on its addresses on ifName (all
// interfaces if empty): a retained address becomes Reserved for its app
// until the pool's reservation TTL, any other is freed. Releasing what is
// not held is not an error (CNI DEL is idempotent).
func (a *Allocator) Release(ctx context.Context, containerID, ifName string) error {
	claims, err := a.cfg.Store.ClaimsOfContainer(containerID)
	if err != nil {
		return fmt.Errorf("container %s: claims: %w", containerID, err)
	}
	var errs []error
	for _, c := range claims {
		if ifName != "" && c.Spec.Interface != ifName {
			continue
		}
		if err := a.releaseClaim(ctx, c.Name, containerID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// releaseClaim releases one claim if containerID still holds it, retrying
// on conflicts.
func (a *Allocator) releaseClaim(ctx context.Context, name, containerID string) error {
	return a.release(ctx, name, heldBy(containerID))
}

// heldBy says whether a claim records containerID.
func heldBy(containerID string) func(*v1alpha1.IPClaim) bool {
	return func(c *v1alpha1.IPClaim) bool { return c.Spec.ContainerID == containerID }
}

// release releases one claim while holds says its holder still holds it,
// retrying on conflicts.
func (a *Allocator) release(ctx context.Context, name string, holds func(*v1alpha1.IPClaim) bool) error {
	_, err := a.releaseIf(ctx, name, holds)
	return err
}

// releaseIf is release, and reports whether it wrote the release (false:
// the claim was gone, released or someone else's already).
func (a *Allocator) releaseIf(ctx context.Context, name string, holds func(*v1alpha1.IPClaim) bool) (bool, error) {
	for attempt := 0; attempt < a.cfg.MaxConflicts; attempt++ {
		c, err := a.cfg.Store.Claim(name)
		if errors.Is(err, ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("claim %s: %w", name, err)
		}
		if !holds(c) || c.Spec.State == v1alpha1.ClaimReserved || c.Spec.State == v1alpha1.ClaimConflict {
			return false, nil // someone else's now, released already, or quarantined
		}
		var ttl time.Duration
		retain := c.Spec.App != nil
		if p, err := a.cfg.Store.Pool(c.Spec.Pool); err != nil || p.DeletionTimestamp != nil {
			retain = false // pool gone or going: nothing to keep the address for
		} else if pool, err := a.pools.get(p); err != nil || !pool.Retain {
			retain = false
		} else {
			ttl = pool.TTL
		}
		if retain {
			c = c.DeepCopy()
			c.Spec.State = v1alpha1.ClaimReserved
			c.Spec.ContainerID = ""
			until := metav1.NewTime(a.cfg.Now().Add(ttl))
			c.Spec.ReservedUntil = &until
			err = a.cfg.Store.Update(ctx, c)
		} else {
			err = a.cfg.Store.Delete(ctx, c)
		}
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("claim %s: release: %w", name, err)
		}
		return true, nil
	}
	return false, fmt.Errorf("claim %s: release: %w", name, ErrTooManyRetries)
}

// Check returns an error unless the container holds its addresses on ifName.
func (a *Allocator) Check(_ context.Context, containerID, ifName string) ([]*v1alpha1.IPClaim, error) {
	claims, err := a.cfg.Store.ClaimsOfContainer(containerID)
	if err != nil {
		return nil, fmt.Errorf("container %s: claims: %w", containerID, err)
	}
	var out []*v1alpha1.IPClaim
	for _, c := range claims {
		if c.Spec.Interface == ifName && c.Spec.State == v1alpha1.ClaimBound {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("container %s interface %s: no address is bound to it", containerID, ifName)
	}
	return out, nil
}

func hash(s string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s))
	return h.Sum64()
}

func sortClaims(cs []*v1alpha1.IPClaim) {
	sort.Slice(cs, func(i, j int) bool {
		a, _ := netip.ParseAddr(cs[i].Spec.Address)
		b, _ := netip.ParseAddr(cs[j].Spec.Address)
		return a.Less(b)
	})
}

// ReleaseEarly releases a terminating pod's claims before its network is
// torn down (berth.io/ip-release: early): each Bound claim of the pod on
// this node goes to Releasing, unplug removes the address from the pod's
// interface, and then the claim is released as by DEL. If unplug fails the
// claim stays Releasing (never claimable) and the error is returned; DEL
// still releases it later.
func (a *Allocator) ReleaseEarly(ctx context.Context, uid types.UID, unplug func(*v1alpha1.IPClaim) error) error {
	claims, err := a.cfg.Store.ClaimsOfPod(uid)
	if err != nil {
		return fmt.Errorf("pod %s: claims: %w", uid, err)
	}
	var errs []error
	for _, c := range claims {
		if c.Spec.Node != a.cfg.Node || c.Spec.State == v1alpha1.ClaimReserved || c.Spec.ContainerID == "" {
			continue
		}
		if c.Spec.State == v1alpha1.ClaimBound {
			c = c.DeepCopy()
			c.Spec.State = v1alpha1.ClaimReleasing
			if err := a.cfg.Store.Update(ctx, c); err != nil {
				errs = append(errs, fmt.Errorf("claim %s: releasing: %w", c.Name, err))
				continue
			}
		}
		if err := unplug(c); err != nil {
			errs = append(errs, fmt.Errorf("claim %s: remove %s from the pod: %w", c.Name, c.Spec.Address, err))
			continue
		}
		if err := a.releaseClaim(ctx, c.Name, c.Spec.ContainerID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
