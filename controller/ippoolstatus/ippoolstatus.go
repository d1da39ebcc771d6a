// Package ippoolstatus keeps each IPPool's status: its size and how many
// addresses are bound, reserved and free, and the Ready and Exhausted
// conditions.
package ippoolstatus

import (
	"context"
	"errors"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/berth-io/berth/agent/ipam"
	"github.com/berth-io/berth/api/v1alpha1"
)

// ControllerName names the reconciler.
const ControllerName = "ippool-status"

// Conditions on IPPools.
const (
	ConditionReady     = "Ready"
	ConditionExhausted = "Exhausted"
)

// +kubebuilder:rbac:groups=berth.io,resources=ippools,verbs=get;list;watch
// +kubebuilder:rbac:groups=berth.io,resources=ippools/status,verbs=get;update
// +kubebuilder:rbac:groups=berth.io,resources=ipclaims,verbs=get;list;watch

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

// SetupWithManager registers the reconciler, indexing claims by pool.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &v1alpha1.IPClaim{}, "spec.pool", func(o client.Object) []string {
		return []string{o.(*v1alpha1.IPClaim).Spec.Pool}
	}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named(ControllerName).
		For(&v1alpha1.IPPool{}).
		Watches(&v1alpha1.IPClaim{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			return []reconcile.Request{{NamespacedName: client.ObjectKey{Name: o.(*v1alpha1.IPClaim).Spec.Pool}}}
		})).
		// A pool's overlap with others changes when any pool does.
		Watches(&v1alpha1.IPPool{}, handler.EnqueueRequestsFromMapFunc(r.otherPools)).
		Complete(r)
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
	st := p.Status.DeepCopy()
	st.ObservedGeneration = p.Generation
	// 2. Its spec.
	pool, err := ipam.ParsePool(&p)
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
		overlap = ipam.OverlapError(&p, pool, all, ipam.ParsePool)
	}
	switch {
	case err != nil:
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ConditionReady, Status: metav1.ConditionFalse,
			Reason: "InvalidSpec", Message: err.Error(), ObservedGeneration: p.Generation})
	case overlap != nil:
		// berth-ipam refuses it the same way (agent/ipam OverlapError).
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ConditionReady, Status: metav1.ConditionFalse,
			Reason: "Overlaps", Message: overlap.Error(), ObservedGeneration: p.Generation})
		st.Size = int64(min(pool.Size(), 1<<62))
	default:
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ConditionReady, Status: metav1.ConditionTrue,
			Reason: "Valid", Message: "the pool hands out addresses", ObservedGeneration: p.Generation})
		st.Size = int64(min(pool.Size(), 1<<62))
	}
	// 3. Its claims.
	var claims v1alpha1.IPClaimList
	if err := r.List(ctx, &claims, client.MatchingFields{"spec.pool": p.Name}); err != nil {
		return reconcile.Result{}, err
	}
	st.Bound, st.Reserved = 0, 0
	for _, c := range claims.Items {
		if c.Spec.State == v1alpha1.ClaimReserved {
			st.Reserved++
		} else {
			st.Bound++
		}
	}
	st.Free = max(0, st.Size-st.Bound-st.Reserved)
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
	// 4. Write it if it changed.
	if equality.Semantic.DeepEqual(st, &p.Status) {
		return reconcile.Result{}, nil
	}
	p.Status = *st
	return reconcile.Result{}, r.Status().Update(ctx, &p)
}
