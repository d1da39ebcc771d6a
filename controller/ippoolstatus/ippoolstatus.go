// Package ippoolstatus keeps each IPPool's status: its size and how many
// addresses are bound, reserved, out of use after a conflict and free, and the Ready and Exhausted
// conditions. It also holds a pool that is being deleted (finalizer
// v1alpha1.FinalizerPoolInUse) until no pod holds an address of it, so
// that no other pool hands those addresses out meanwhile.
package ippoolstatus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/claimindex"
	"github.com/berth-io/berth/internal/ipalloc"
)

// ControllerName names the reconciler.
const ControllerName = "ippool-status"

// Conditions on IPPools.
const (
	ConditionReady     = "Ready"
	ConditionExhausted = "Exhausted"
)

// +kubebuilder:rbac:groups=berth.io,resources=ippools,verbs=get;list;watch;update
// +kubebuilder:rbac:groups=berth.io,resources=ippools/status,verbs=get;update
// +kubebuilder:rbac:groups=berth.io,resources=ippools/finalizers,verbs=update
// +kubebuilder:rbac:groups=berth.io,resources=ipclaims,verbs=get;list;watch;delete

// Reconciler counts a pool's claims into its status.
type Reconciler struct {
	client.Client
}

// New returns a Reconciler using c.
func New(c client.Client) (*Reconciler, error) {
	if c == nil {
		return nil, errors.New("ippoolstatus: no client")
	}
	return &Reconciler{Client: c}, nil
}

// SetupWithManager registers the reconciler, indexing claims by pool, and
// the pool gauges (RegisterMetrics) with controller-runtime's registry.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if err := IndexClaims(context.Background(), mgr.GetFieldIndexer()); err != nil {
		return err
	}
	if err := RegisterMetrics(ctrlmetrics.Registry, mgr.GetCache(), mgr.Elected()); err != nil {
		return err
	}
	// Pool events count only when a pool comes, goes or its spec changes
	// (its generation; deletion bumps it too), not for the status writes
	// this reconciler makes: each would recount the pool again, and
	// through otherPools every other pool.
	specOnly := builder.WithPredicates(predicate.GenerationChangedPredicate{})
	return ctrl.NewControllerManagedBy(mgr).
		Named(ControllerName).
		For(&v1alpha1.IPPool{}, specOnly).
		Watches(&v1alpha1.IPClaim{}, handler.Funcs{
			CreateFunc: func(_ context.Context, e event.CreateEvent, q queue) { recount(q, e.Object) },
			UpdateFunc: func(_ context.Context, e event.UpdateEvent, q queue) { recount(q, e.ObjectOld, e.ObjectNew) },
			DeleteFunc: func(_ context.Context, e event.DeleteEvent, q queue) { recount(q, e.Object) },
		}).
		// A pool's overlap with others changes when any pool does.
		Watches(&v1alpha1.IPPool{}, handler.EnqueueRequestsFromMapFunc(r.otherPools), specOnly).
		Complete(r)
}

// RecountDelay gathers a pool's claim changes into one recount, and so at
// most one status write, per second: a rollout changes claims by the
// hundred per second, a recount reads every claim of the pool, and each
// status write goes out to every berth-agent's watch. Changes to the pool
// itself are recounted at once.
const RecountDelay = time.Second

type queue = workqueue.TypedRateLimitingInterface[reconcile.Request]

// recount queues the pools of claims after RecountDelay. The queue keeps
// one entry per pool, at its earliest time: later changes join it.
func recount(q queue, claims ...client.Object) {
	for _, o := range claims {
		q.AddAfter(reconcile.Request{NamespacedName: client.ObjectKey{Name: o.(*v1alpha1.IPClaim).Spec.Pool}}, RecountDelay)
	}
}

// IndexPool indexes claims by pool in the reconciler's cache.
const IndexPool = "spec.pool"

// IndexClaims registers IndexPool in idx. Call it before the cache starts.
func IndexClaims(ctx context.Context, idx client.FieldIndexer) error {
	return claimindex.Register(ctx, idx, map[string]func(*v1alpha1.IPClaim) string{
		IndexPool: func(c *v1alpha1.IPClaim) string { return c.Spec.Pool },
	})
}

// Claims lists pool's claims from r, a cache indexed by IndexPool. They
// are shallow copies of the cached objects, not deep copies: a recount
// reads every claim of the pool, and for 10,000 claims deep copies take
// 4x the time and 3x the garbage (docs/benchmarks.md). Callers read them
// and must not change them (nor what they point to): deep-copy first.
func Claims(ctx context.Context, r client.Reader, pool string) ([]v1alpha1.IPClaim, error) {
	var claims v1alpha1.IPClaimList
	if err := r.List(ctx, &claims, client.MatchingFields{IndexPool: pool}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("claims of pool %s: %w", pool, err)
	}
	return claims.Items, nil
}

// otherPools lists every pool but o, to recheck their overlaps.
func (r *Reconciler) otherPools(ctx context.Context, o client.Object) []reconcile.Request {
	var pools v1alpha1.IPPoolList
	if err := r.List(ctx, &pools); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for _, p := range pools.Items {
		if p.Name != o.GetName() {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKey{Name: p.Name}})
		}
	}
	return reqs
}

// Reconcile recounts one pool.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	// 1. The pool.
	var p v1alpha1.IPPool
	if err := r.Get(ctx, req.NamespacedName, &p); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if p.DeletionTimestamp == nil && controllerutil.AddFinalizer(&p, v1alpha1.FinalizerPoolInUse) {
		if err := r.Update(ctx, &p); err != nil {
			return reconcile.Result{}, fmt.Errorf("pool %s: add finalizer: %w", p.Name, err)
		}
	}
	st := p.Status.DeepCopy()
	st.ObservedGeneration = p.Generation
	// 2. Its spec.
	pool, err := ipalloc.ParsePool(&p)
	var overlap error
	if err == nil {
		var pools v1alpha1.IPPoolList
		if err := r.List(ctx, &pools); err != nil {
			return reconcile.Result{}, err
		}
		all := make([]*v1alpha1.IPPool, len(pools.Items))
		for i := range pools.Items {
			all[i] = &pools.Items[i]
		}
		overlap = ipalloc.OverlapError(&p, pool, all, ipalloc.ParsePool)
	}
	switch {
	case err != nil:
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ConditionReady, Status: metav1.ConditionFalse,
			Reason: "InvalidSpec", Message: err.Error(), ObservedGeneration: p.Generation})
	case overlap != nil:
		// berth-ipam refuses it the same way (internal/ipalloc OverlapError).
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ConditionReady, Status: metav1.ConditionFalse,
			Reason: "Overlaps", Message: overlap.Error(), ObservedGeneration: p.Generation})
		st.Size = int64(min(pool.Size(), 1<<62))
	default:
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ConditionReady, Status: metav1.ConditionTrue,
			Reason: "Valid", Message: "the pool hands out addresses", ObservedGeneration: p.Generation})
		st.Size = int64(min(pool.Size(), 1<<62))
	}
	// 3. Its claims.
	claims, lerr := Claims(ctx, r, p.Name)
	if lerr != nil {
		return reconcile.Result{}, lerr
	}
	st.Bound, st.Reserved, st.Conflict = 0, 0, 0
	for _, c := range claims {
		switch c.Spec.State {
		case v1alpha1.ClaimReserved:
			st.Reserved++
		case v1alpha1.ClaimConflict:
			st.Conflict++
		default:
			st.Bound++
		}
	}
	st.Free = max(0, st.Size-st.Bound-st.Reserved-st.Conflict)
	exhausted := metav1.Condition{Type: ConditionExhausted, Status: metav1.ConditionFalse, Reason: "FreeAddresses",
		Message: "free addresses remain", ObservedGeneration: p.Generation}
	if err == nil && st.Free == 0 {
		exhausted.Status, exhausted.Reason = metav1.ConditionTrue, "NoFreeAddress"
		exhausted.Message = "every address is bound or reserved; new pods of apps without a reserve take over other apps' reservations, soonest-ending first"
		if p.Spec.ReclaimReservations != nil && !*p.Spec.ReclaimReservations {
			exhausted.Message = "every address is bound or reserved; new pods of apps without a reserve fail until reservations end (reclaimReservations is off)"
		}
	}
	meta.SetStatusCondition(&st.Conditions, exhausted)
	// 4. A pool being deleted goes once no pod holds an address of it.
	if p.DeletionTimestamp != nil {
		held, err := r.release(ctx, claims)
		if err != nil {
			return reconcile.Result{}, fmt.Errorf("pool %s: %w", p.Name, err)
		}
		if len(held) == 0 {
			if controllerutil.RemoveFinalizer(&p, v1alpha1.FinalizerPoolInUse) {
				if err := r.Update(ctx, &p); err != nil && !apierrors.IsNotFound(err) {
					return reconcile.Result{}, fmt.Errorf("pool %s: remove finalizer: %w", p.Name, err)
				}
			}
			return reconcile.Result{}, nil
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ConditionReady, Status: metav1.ConditionFalse,
			Reason: "Deleting", Message: deletingMessage(held), ObservedGeneration: p.Generation})
		st.Reserved, st.Conflict, st.Free = 0, 0, max(0, st.Size-st.Bound)
	}
	// 5. Write it if it changed.
	if equality.Semantic.DeepEqual(st, &p.Status) {
		return reconcile.Result{}, nil
	}
	p.Status = *st
	return reconcile.Result{}, r.Status().Update(ctx, &p)
}

// release deletes the Reserved and Conflict claims of a pool being
// deleted (nobody is to get those addresses back, and the pool will hand
// out none) and returns the claims pods still hold.
// claims are Claims' shallow copies: release only reads them.
func (r *Reconciler) release(ctx context.Context, claims []v1alpha1.IPClaim) ([]v1alpha1.IPClaim, error) {
	var held []v1alpha1.IPClaim
	for i := range claims {
		c := &claims[i]
		if c.Spec.State != v1alpha1.ClaimReserved && c.Spec.State != v1alpha1.ClaimConflict {
			held = append(held, *c)
			continue
		}
		// At the resourceVersion read: an agent that took the address back
		// meanwhile wins, and the claim counts as held on the next pass.
		rv := c.ResourceVersion
		if err := r.Delete(ctx, c.DeepCopy(), client.Preconditions{ResourceVersion: &rv}); err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("delete %s claim %s: %w", c.Spec.State, c.Name, err)
		}
	}
	return held, nil
}

// deletingMessage names the pods that keep a pool being deleted.
func deletingMessage(held []v1alpha1.IPClaim) string {
	const show = 5
	var names []string
	for _, c := range held[:min(len(held), show)] {
		names = append(names, fmt.Sprintf("%s (pod %s/%s)", c.Spec.Address, c.Spec.Pod.Namespace, c.Spec.Pod.Name))
	}
	if len(held) > show {
		names = append(names, fmt.Sprintf("and %d more", len(held)-show))
	}
	return fmt.Sprintf("being deleted: it goes once its pods release their addresses; %d still held: %s", len(held), strings.Join(names, ", "))
}
