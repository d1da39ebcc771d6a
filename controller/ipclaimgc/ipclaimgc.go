// Package ipclaimgc is berth-controller's IP claim garbage collector. It
// ends what a node cannot end itself: a claim whose pod object is gone
// (its node died before CNI DEL ran) or whose node is gone past a grace
// period moves to Reserved for its app (or is freed if not retained); a
// reservation past its TTL, or of an app that no longer exists, is freed;
// an address quarantined after a conflict (state Conflict) is freed when
// its quarantine ends, and never reserved.
// It decides from the claim's own record (pod UID, node, app), never from
// pod.status.podIPs.
//
// A pod object that is gone does not mean its sandbox is: after a force
// delete, PodGC of a deleted Node's pods, or on a partitioned node, the
// old sandbox may still use the address. While the node's berth-agent
// renews its lease (internal/agentlease), the agent alone releases its
// node's claims, once the runtime no longer has their sandboxes; the
// controller acts for a node only when its agent has been silent for
// AgentGrace, or never wrote a lease (an agent older than the lease, or
// one without IPAM).
package ipclaimgc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/agentlease"
	"github.com/berth-io/berth/internal/claimindex"
	"github.com/berth-io/berth/internal/promreg"
)

// ControllerName names the reconciler.
const ControllerName = "ipclaim-gc"

// Defaults of Config.
const (
	DefaultNodeGrace = 5 * time.Minute
	// DefaultAgentGrace is twice kube-controller-manager's default pod
	// eviction delay (5m): a node that was only NotReady is back, or its
	// pods moved, before its addresses do.
	DefaultAgentGrace = 10 * time.Minute
)

// Condition types and reasons on IPClaims.
const (
	ConditionOrphaned = "Orphaned"
	ReasonPodGone     = "PodGone"
	ReasonNodeGone    = "NodeGone"
	ReasonHeld        = "Held"
	// ReasonAgentActive: the pod (or node) is gone, and the node's agent,
	// still renewing its lease, releases the claim once the runtime has no
	// sandbox of it.
	ReasonAgentActive = "AgentActive"
)

// Config configures the Reconciler.
type Config struct {
	// NodeGrace is how long a claim's node must have been gone before its
	// claims are reserved. Default 5m.
	NodeGrace time.Duration
	// AgentGrace is how long a node's agent must have been silent (its
	// lease not renewed) before the controller reserves or frees the
	// claims of that node's gone pods itself. Default 10m.
	AgentGrace time.Duration
	// AgentNamespace holds the agents' leases. Default "berth-system".
	AgentNamespace string
	// Leases reads the agents' leases. Default: the manager's API reader
	// (uncached: read only for claims whose pod or node is gone).
	Leases client.Reader
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// +kubebuilder:rbac:groups=berth.io,resources=ipclaims,verbs=get;list;watch;update;delete
// +kubebuilder:rbac:groups=berth.io,resources=ipclaims/status,verbs=get;update
// +kubebuilder:rbac:groups=berth.io,resources=ippools,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods;nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;replicasets,verbs=get;list;watch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get

// Reconciler collects IPClaim garbage.
type Reconciler struct {
	client.Client
	cfg       Config
	collected *prometheus.CounterVec
}

// New validates cfg and returns a Reconciler using c.
func New(c client.Client, cfg Config) (*Reconciler, error) {
	if c == nil {
		return nil, errors.New("ipclaimgc: no client")
	}
	if cfg.NodeGrace == 0 {
		cfg.NodeGrace = DefaultNodeGrace
	}
	if cfg.AgentGrace == 0 {
		cfg.AgentGrace = DefaultAgentGrace
	}
	if cfg.AgentNamespace == "" {
		cfg.AgentNamespace = agentlease.DefaultNamespace
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Reconciler{Client: c, cfg: cfg, collected: newCollected()}, nil
}

// indexPodUID indexes the cached claims by spec.pod.uid.
const indexPodUID = "spec.pod.uid"

// SetupWithManager registers the reconciler, and berth_controller_ipclaim_gc_total
// with controller-runtime's registry: every claim, and the claims of a pod
// when it is deleted. Other pod events are not watched: a pod's
// creation or status changes nothing the GC decides on (its claims name
// its UID), and every pod of the cluster sends them.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.cfg.Leases == nil {
		r.cfg.Leases = mgr.GetAPIReader()
	}
	err := claimindex.Register(context.Background(), mgr.GetFieldIndexer(), map[string]func(*v1alpha1.IPClaim) string{
		indexPodUID: func(c *v1alpha1.IPClaim) string { return string(c.Spec.Pod.UID) },
	})
	if err != nil {
		return err
	}
	if r.collected, err = promreg.Register(ctrlmetrics.Registry, r.collected); err != nil {
		return err
	}
	deleted := predicate.Funcs{
		CreateFunc:  func(event.CreateEvent) bool { return false },
		UpdateFunc:  func(event.UpdateEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named(ControllerName).
		For(&v1alpha1.IPClaim{}).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(r.claimsOfPod), builder.WithPredicates(deleted)).
		Complete(r)
}

// claimsOfPod maps a deleted pod to its claims, through the index (one
// lookup, not a scan of every claim).
func (r *Reconciler) claimsOfPod(ctx context.Context, o client.Object) []reconcile.Request {
	var l v1alpha1.IPClaimList
	if err := r.List(ctx, &l, client.MatchingFields{indexPodUID: string(o.GetUID())}); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, c := range l.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&c)})
	}
	return out
}

// Reconcile moves one claim along.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	// 1. The claim.
	var c v1alpha1.IPClaim
	if err := r.Get(ctx, req.NamespacedName, &c); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	now := r.cfg.Now()
	switch c.Spec.State {
	case v1alpha1.ClaimReserved:
		// 2. A reservation ends at its TTL or with its app.
		if c.Spec.ReservedUntil == nil || !now.Before(c.Spec.ReservedUntil.Time) {
			return reconcile.Result{}, r.free(ctx, &c, reasonExpired)
		}
		gone, err := r.appGone(ctx, c.Spec.App)
		if err != nil {
			return reconcile.Result{}, err
		}
		if gone {
			return reconcile.Result{}, r.free(ctx, &c, reasonAppGone)
		}
		return reconcile.Result{RequeueAfter: c.Spec.ReservedUntil.Sub(now)}, nil
	case v1alpha1.ClaimConflict:
		// 3. Another host answered for the address: out of use until its
		// quarantine ends, whatever becomes of its pod or app.
		if c.Spec.ReservedUntil == nil || !now.Before(c.Spec.ReservedUntil.Time) {
			return reconcile.Result{}, r.free(ctx, &c, reasonQuarantineEnded)
		}
		return reconcile.Result{RequeueAfter: c.Spec.ReservedUntil.Sub(now)}, nil
	default:
		// 4. A held claim: is its holder gone?
		why, requeue, err := r.orphaned(ctx, &c, now)
		if err != nil || why == "" {
			return reconcile.Result{RequeueAfter: requeue}, err
		}
		return reconcile.Result{}, r.reserve(ctx, &c, why, now)
	}
}

// orphaned returns why the claim's holder is gone and the controller
// must act ("" if it is not, or the node's agent acts), or when to look
// again.
func (r *Reconciler) orphaned(ctx context.Context, c *v1alpha1.IPClaim, now time.Time) (string, time.Duration, error) {
	why, requeue, err := r.holderGone(ctx, c, now)
	if err != nil || why == "" || c.Spec.Node == "" {
		return why, requeue, err
	}
	left, renewed, err := r.agentActive(ctx, c.Spec.Node, now)
	if err != nil || left <= 0 {
		return why, 0, err
	}
	if meta.FindStatusCondition(c.Status.Conditions, ConditionOrphaned) == nil {
		meta.SetStatusCondition(&c.Status.Conditions, metav1.Condition{Type: ConditionOrphaned, Status: metav1.ConditionFalse,
			Reason: ReasonAgentActive, ObservedGeneration: c.Generation, LastTransitionTime: metav1.NewTime(now),
			Message: fmt.Sprintf("pod %s/%s (uid %s) is gone (%s), but its sandbox may still use the address: node %s's agent (lease renewed %s) releases it once the runtime has no sandbox of it; the controller acts only after the agent has been silent for %s",
				c.Spec.Pod.Namespace, c.Spec.Pod.Name, c.Spec.Pod.UID, why, c.Spec.Node, renewed.UTC().Format(time.RFC3339), r.cfg.AgentGrace)})
		c.Status.ObservedGeneration = c.Generation
		if err := r.write(ctx, c, true); err != nil {
			return "", 0, err
		}
	}
	return "", left, nil
}

// agentActive returns how long the node's agent stays active by its lease
// (<= 0: silent past the grace period, or no lease at all) and when it
// last renewed it.
func (r *Reconciler) agentActive(ctx context.Context, node string, now time.Time) (time.Duration, time.Time, error) {
	var l coordinationv1.Lease
	err := r.cfg.Leases.Get(ctx, client.ObjectKey{Namespace: r.cfg.AgentNamespace, Name: agentlease.Name(node)}, &l)
	if apierrors.IsNotFound(err) {
		return 0, time.Time{}, nil
	}
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("agent lease of node %s: %w", node, err)
	}
	renewed := agentlease.LastRenewed(&l)
	return renewed.Add(r.cfg.AgentGrace).Sub(now), renewed, nil
}

// holderGone returns why the claim's holder is gone ("" if it is not), or
// when to look again.
func (r *Reconciler) holderGone(ctx context.Context, c *v1alpha1.IPClaim, now time.Time) (string, time.Duration, error) {
	var pod corev1.Pod
	err := r.Get(ctx, client.ObjectKey{Namespace: c.Spec.Pod.Namespace, Name: c.Spec.Pod.Name}, &pod)
	switch {
	case apierrors.IsNotFound(err):
		return ReasonPodGone, 0, nil
	case err != nil:
		return "", 0, err
	case pod.UID != c.Spec.Pod.UID:
		return ReasonPodGone, 0, nil // a new pod of the same name
	}
	if cond := meta.FindStatusCondition(c.Status.Conditions, ConditionOrphaned); cond != nil && (cond.Status == metav1.ConditionTrue || cond.Reason == ReasonAgentActive) {
		// Orphaned by an earlier holder (or left to its node's agent),
		// then taken by this live pod (its app took its reservation back,
		// or another app reclaimed it).
		meta.RemoveStatusCondition(&c.Status.Conditions, ConditionOrphaned)
		c.Status.ObservedGeneration = c.Generation
		if err := r.write(ctx, c, true); err != nil {
			return "", 0, err
		}
	}
	if c.Spec.Node == "" {
		return "", 0, nil
	}
	var node corev1.Node
	err = r.Get(ctx, client.ObjectKey{Name: c.Spec.Node}, &node)
	if err != nil && !apierrors.IsNotFound(err) {
		return "", 0, err
	}
	cond := meta.FindStatusCondition(c.Status.Conditions, ConditionOrphaned)
	if err == nil {
		if cond != nil && cond.Reason == ReasonNodeGone {
			// The node came back.
			meta.RemoveStatusCondition(&c.Status.Conditions, ConditionOrphaned)
			return "", 0, r.write(ctx, c, true)
		}
		return "", 0, nil
	}
	// The node is gone: wait out the grace period, counted from when this
	// controller first saw it gone.
	if cond == nil || cond.Reason != ReasonNodeGone {
		meta.SetStatusCondition(&c.Status.Conditions, metav1.Condition{Type: ConditionOrphaned, Status: metav1.ConditionFalse,
			Reason: ReasonNodeGone, ObservedGeneration: c.Generation, LastTransitionTime: metav1.NewTime(now),
			Message: fmt.Sprintf("node %s is gone; the address is reserved after %s unless it returns", c.Spec.Node, r.cfg.NodeGrace)})
		c.Status.ObservedGeneration = c.Generation
		return "", r.cfg.NodeGrace, r.write(ctx, c, true)
	}
	if left := cond.LastTransitionTime.Add(r.cfg.NodeGrace).Sub(now); left > 0 {
		return "", left, nil
	}
	return ReasonNodeGone, 0, nil
}

// reserve moves a held claim to Reserved for its app, or frees it.
func (r *Reconciler) reserve(ctx context.Context, c *v1alpha1.IPClaim, why string, now time.Time) error {
	var pool v1alpha1.IPPool
	err := r.Get(ctx, client.ObjectKey{Name: c.Spec.Pool}, &pool)
	if apierrors.IsNotFound(err) || c.Spec.App == nil || (err == nil && pool.Spec.Retain != nil && !*pool.Spec.Retain) {
		return r.free(ctx, c, why)
	}
	if err != nil {
		return err
	}
	ttl, err := pool.Spec.ParseReservationTTL()
	if err != nil {
		// A value stored before the API server checked it: the pool is
		// Ready=False (InvalidSpec, by ippoolstatus) and hands out nothing;
		// its address is still kept for the app, for the default time.
		ttl = v1alpha1.DefaultReservationTTL
	}
	c.Spec.State = v1alpha1.ClaimReserved
	c.Spec.ContainerID = ""
	until := metav1.NewTime(now.Add(ttl))
	c.Spec.ReservedUntil = &until
	if err := r.write(ctx, c, false); err != nil {
		return err // a conflict requeues; the allocator may have moved it
	}
	r.collected.WithLabelValues(actionReserved, why).Inc()
	ctrl.LoggerFrom(ctx).Info("reserved the claim of a pod that ended without releasing it", "claim", c.Name, "address", c.Spec.Address,
		"pod", c.Spec.Pod.Namespace+"/"+c.Spec.Pod.Name, "pod_uid", c.Spec.Pod.UID, "node", c.Spec.Node, "reason", why, "until", until.Time)
	meta.SetStatusCondition(&c.Status.Conditions, metav1.Condition{Type: ConditionOrphaned, Status: metav1.ConditionTrue,
		Reason: why, ObservedGeneration: c.Generation, LastTransitionTime: metav1.NewTime(now),
		Message: fmt.Sprintf("pod %s/%s (uid %s) on node %s ended without releasing the address; reserved for its app", c.Spec.Pod.Namespace, c.Spec.Pod.Name, c.Spec.Pod.UID, c.Spec.Node)})
	c.Status.ObservedGeneration = c.Generation
	return r.write(ctx, c, true)
}

// write updates the claim (its status if status) at the resourceVersion
// read. Like berth-agent, it resets the claim's managedFields (a list of
// one empty entry: the API server then stores none); nothing applies
// claims, so their field ownership has no use (api/README.md).
func (r *Reconciler) write(ctx context.Context, c *v1alpha1.IPClaim, status bool) error {
	c.ManagedFields = []metav1.ManagedFieldsEntry{{}}
	if status {
		return r.Status().Update(ctx, c)
	}
	return r.Update(ctx, c)
}

// free deletes the claim at the resourceVersion read, for reason.
func (r *Reconciler) free(ctx context.Context, c *v1alpha1.IPClaim, reason string) error {
	rv := c.ResourceVersion
	err := r.Delete(ctx, c, client.Preconditions{ResourceVersion: &rv, UID: &c.UID})
	if err != nil {
		return client.IgnoreNotFound(err)
	}
	r.collected.WithLabelValues(actionFreed, reason).Inc()
	ctrl.LoggerFrom(ctx).Info("freed the claim", "claim", c.Name, "address", c.Spec.Address, "pool", c.Spec.Pool,
		"pod", c.Spec.Pod.Namespace+"/"+c.Spec.Pod.Name, "state", c.Spec.State, "reason", reason)
	return nil
}

// appGone reports whether the workload an address is reserved for is gone.
// Groups are never gone: their reservations end at the TTL.
func (r *Reconciler) appGone(ctx context.Context, app *v1alpha1.App) (bool, error) {
	if app == nil {
		return true, nil
	}
	var obj client.Object
	switch app.Kind {
	case v1alpha1.AppDeployment:
		obj = &appsv1.Deployment{}
	case v1alpha1.AppStatefulSet:
		obj = &appsv1.StatefulSet{}
	case v1alpha1.AppReplicaSet:
		obj = &appsv1.ReplicaSet{}
	default:
		return false, nil
	}
	err := r.Get(ctx, client.ObjectKey{Namespace: app.Namespace, Name: app.Name}, obj)
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	return false, err
}
