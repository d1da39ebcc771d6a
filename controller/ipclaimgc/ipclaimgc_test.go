package ipclaimgc_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/controller/ipclaimgc"
	"github.com/berth-io/berth/internal/agentlease"
	"github.com/berth-io/berth/internal/cachetrim"
	"github.com/berth-io/berth/test/envtest"
	"github.com/berth-io/berth/test/poll"
	"github.com/berth-io/berth/test/promtest"
	"github.com/berth-io/berth/test/runnable"
)

func init() { ctrllog.SetLogger(logr.Discard()) }

var crdDir = filepath.Join("..", "..", "deploy", "base", "crds")

func start(t *testing.T, gcCfg ipclaimgc.Config) (client.Client, *rest.Config) {
	t.Helper()
	return startWith(t, crdDir, gcCfg)
}

// startWith is start with the CRDs of dir.
func startWith(t *testing.T, dir string, gcCfg ipclaimgc.Config) (client.Client, *rest.Config) {
	t.Helper()
	cfg := envtest.Start(t, envtest.Options{CRDDirectoryPaths: []string{dir}})
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	// As berth-controller's: a trimmed cache.
	// A test run again (go test -count) makes the controller again.
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: s, Metrics: metricsserver.Options{BindAddress: "0"}, Cache: cachetrim.Options(cache.Options{}),
		Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := ipclaimgc.New(mgr.GetClient(), gcCfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	runnable.Start(t, time.Minute, mgr.Start)
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	return c, cfg
}

func create(t *testing.T, c client.Client, obj client.Object) {
	t.Helper()
	if err := c.Create(context.Background(), obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

func claim(name, addr string, state v1alpha1.ClaimState, pod v1alpha1.PodRef, node string, app *v1alpha1.App) *v1alpha1.IPClaim {
	c := &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1alpha1.LabelPodUID: string(pod.UID)}},
		Spec: v1alpha1.IPClaimSpec{Pool: "p", Address: addr, State: state, Pod: pod, Node: node, App: app, ContainerID: "c-" + name}}
	return c
}

func get(t *testing.T, c client.Client, name string) (*v1alpha1.IPClaim, bool) {
	t.Helper()
	var cl v1alpha1.IPClaim
	err := c.Get(context.Background(), client.ObjectKey{Name: name}, &cl)
	if apierrors.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return &cl, true
}

func TestReconciler_Reconcile(t *testing.T) {
	c, _ := start(t, ipclaimgc.Config{NodeGrace: 2 * time.Second})
	ctx := context.Background()
	create(t, c, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.5.0.0/24",
		ReservationTTL: "1h"}})
	create(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}})
	create(t, c, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "alive"}})
	live := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "live"}, Spec: corev1.PodSpec{NodeName: "alive",
		Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	create(t, c, live)
	onDead := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "on-dead"}, Spec: corev1.PodSpec{NodeName: "dead",
		Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	create(t, c, onDead)
	sel := &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}
	create(t, c, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"}, Spec: appsv1.DeploymentSpec{Selector: sel,
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel.MatchLabels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}}})
	web := &v1alpha1.App{Kind: v1alpha1.AppDeployment, Namespace: "ns", Name: "web"}
	gone := &v1alpha1.App{Kind: v1alpha1.AppDeployment, Namespace: "ns", Name: "gone"}
	past := metav1.NewTime(time.Now().Add(-time.Minute))
	future := metav1.NewTime(time.Now().Add(time.Hour))

	// The live pod's claim: its pod and node exist. Its status has no IP
	// (podIPs is not consulted): it must stay Bound.
	create(t, c, claim("p-10-5-0-1", "10.5.0.1", v1alpha1.ClaimBound, v1alpha1.PodRef{Namespace: "ns", Name: "live", UID: live.UID}, "alive", web))
	// A claim whose pod object is gone (its node died before DEL).
	create(t, c, claim("p-10-5-0-2", "10.5.0.2", v1alpha1.ClaimBound, v1alpha1.PodRef{Namespace: "ns", Name: "vanished", UID: "uid-vanished"}, "alive", web))
	// A claim held by an older pod of the live pod's name.
	create(t, c, claim("p-10-5-0-3", "10.5.0.3", v1alpha1.ClaimBound, v1alpha1.PodRef{Namespace: "ns", Name: "live", UID: "uid-older"}, "alive", web))
	// Not retained, pod gone: freed.
	create(t, c, claim("p-10-5-0-4", "10.5.0.4", v1alpha1.ClaimBound, v1alpha1.PodRef{Namespace: "ns", Name: "job-x", UID: "uid-job"}, "alive", nil))
	// The pod exists but its node is gone: reserved after the grace.
	create(t, c, claim("p-10-5-0-5", "10.5.0.5", v1alpha1.ClaimBound, v1alpha1.PodRef{Namespace: "ns", Name: "on-dead", UID: onDead.UID}, "dead", web))
	// Reservations: past TTL, app gone, still valid.
	expired := claim("p-10-5-0-6", "10.5.0.6", v1alpha1.ClaimReserved, v1alpha1.PodRef{Namespace: "ns", Name: "old", UID: "u6"}, "alive", web)
	expired.Spec.ReservedUntil = &past
	create(t, c, expired)
	orphanApp := claim("p-10-5-0-7", "10.5.0.7", v1alpha1.ClaimReserved, v1alpha1.PodRef{Namespace: "ns", Name: "old", UID: "u7"}, "alive", gone)
	orphanApp.Spec.ReservedUntil = &future
	create(t, c, orphanApp)
	kept := claim("p-10-5-0-8", "10.5.0.8", v1alpha1.ClaimReserved, v1alpha1.PodRef{Namespace: "ns", Name: "old", UID: "u8"}, "alive", web)
	kept.Spec.ReservedUntil = &future
	create(t, c, kept)
	// Quarantined after a conflict (berth-netcheck): never reserved, even
	// with its pod gone; freed when the quarantine ends (soon, past), kept
	// before (the live pod's, an hour ahead).
	quarantined := func(name, addr, podName string, uid types.UID, until metav1.Time) {
		q := claim(name, addr, v1alpha1.ClaimConflict, v1alpha1.PodRef{Namespace: "ns", Name: podName, UID: uid}, "alive", web)
		q.Spec.ContainerID, q.Spec.ReservedUntil = "", &until
		create(t, c, q)
	}
	soon := metav1.NewTime(time.Now().Add(6 * time.Second))
	quarantined("p-10-5-0-9", "10.5.0.9", "vanished-9", "uid-c9", soon)
	quarantined("p-10-5-0-10", "10.5.0.10", "vanished-10", "uid-c10", past)
	quarantined("p-10-5-0-11", "10.5.0.11", "live", live.UID, future)

	gc0 := gcCounts(t)

	reservedFor := func(name, reason string) func() bool {
		return func() bool {
			cl, ok := get(t, c, name)
			if !ok || cl.Spec.State != v1alpha1.ClaimReserved || cl.Spec.ReservedUntil == nil || cl.Spec.ContainerID != "" {
				return false
			}
			cond := meta.FindStatusCondition(cl.Status.Conditions, ipclaimgc.ConditionOrphaned)
			return cond != nil && cond.Status == metav1.ConditionTrue && cond.Reason == reason && cl.Status.ObservedGeneration == cl.Generation
		}
	}
	deleted := func(name string) func() bool { return func() bool { _, ok := get(t, c, name); return !ok } }

	poll.Until(t, 20*time.Second, "claim of a vanished pod reserved", reservedFor("p-10-5-0-2", ipclaimgc.ReasonPodGone))
	poll.Until(t, 20*time.Second, "claim of an older pod of the same name reserved", reservedFor("p-10-5-0-3", ipclaimgc.ReasonPodGone))
	poll.Until(t, 20*time.Second, "unretained claim of a vanished pod freed", deleted("p-10-5-0-4"))
	poll.Until(t, 20*time.Second, "expired reservation freed", deleted("p-10-5-0-6"))
	poll.Until(t, 20*time.Second, "reservation of a deleted app freed", deleted("p-10-5-0-7"))
	poll.Until(t, 20*time.Second, "claim on a dead node reserved after the grace period", reservedFor("p-10-5-0-5", ipclaimgc.ReasonNodeGone))
	poll.Until(t, 20*time.Second, "a quarantine that ended freed", deleted("p-10-5-0-10"))
	if time.Now().Before(soon.Add(-time.Second)) {
		if cl, ok := get(t, c, "p-10-5-0-9"); !ok || cl.Spec.State != v1alpha1.ClaimConflict {
			t.Fatalf("a quarantined claim of a vanished pod before its quarantine ended: %+v, want it kept in Conflict", cl)
		}
	} else {
		t.Log("the checks above outlasted the quarantine of p-10-5-0-9: its state during it is not checked")
	}
	poll.Until(t, 20*time.Second, "a quarantine freed when it ends", deleted("p-10-5-0-9"))

	// The controller's writes (spec, then status) leave no managedFields,
	// though the test's create recorded some.
	for _, name := range []string{"p-10-5-0-2", "p-10-5-0-3", "p-10-5-0-5"} {
		if cl, _ := get(t, c, name); len(cl.ManagedFields) != 0 {
			t.Errorf("%s keeps managedFields %+v", name, cl.ManagedFields)
		}
	}
	for _, name := range []string{"p-10-5-0-1", "p-10-5-0-8"} {
		cl, ok := get(t, c, name)
		if !ok {
			t.Fatalf("%s deleted", name)
		}
		if name == "p-10-5-0-1" && cl.Spec.State != v1alpha1.ClaimBound {
			t.Errorf("live pod's claim is %s, want Bound", cl.Spec.State)
		}
		if name == "p-10-5-0-8" && cl.Spec.State != v1alpha1.ClaimReserved {
			t.Errorf("valid reservation is %s", cl.Spec.State)
		}
	}

	// The app takes the reservation of the vanished pod back for a new
	// pod: the claim is no longer marked Orphaned.
	next := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "next"}, Spec: corev1.PodSpec{NodeName: "alive",
		Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	create(t, c, next)
	taken, _ := get(t, c, "p-10-5-0-2")
	taken.Spec.State, taken.Spec.ReservedUntil, taken.Spec.ContainerID = v1alpha1.ClaimBound, nil, "c-next"
	taken.Spec.Pod = v1alpha1.PodRef{Namespace: "ns", Name: "next", UID: next.UID}
	if err := c.Update(ctx, taken); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 20*time.Second, "a claim taken back by its app to lose its Orphaned condition", func() bool {
		cl, ok := get(t, c, "p-10-5-0-2")
		return ok && cl.Spec.State == v1alpha1.ClaimBound && meta.FindStatusCondition(cl.Status.Conditions, ipclaimgc.ConditionOrphaned) == nil
	})

	// The live pod is deleted: its claim is reserved (the pod event
	// triggers it).
	if err := c.Delete(ctx, live, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 20*time.Second, "claim of the deleted live pod reserved", reservedFor("p-10-5-0-1", ipclaimgc.ReasonPodGone))
	if cl, ok := get(t, c, "p-10-5-0-11"); !ok || cl.Spec.State != v1alpha1.ClaimConflict {
		t.Errorf("the deleted live pod's quarantined claim: %+v, want it kept in Conflict until its quarantine ends", cl)
	}

	// berth_controller_ipclaim_gc_total counted each change once, by its reason.
	gc1 := gcCounts(t)
	for series, want := range map[string]float64{
		"reserved/PodGone": 3, "reserved/NodeGone": 1, "freed/PodGone": 1, "freed/NodeGone": 0, "freed/Expired": 1, "freed/AppGone": 1,
		"freed/QuarantineEnded": 2,
	} {
		if got := gc1[series] - gc0[series]; got != want {
			t.Errorf("berth_controller_ipclaim_gc_total{%s} rose by %v, want %v", series, got, want)
		}
	}
}

// gcCounts reads berth_controller_ipclaim_gc_total from controller-runtime's
// registry, by "action/reason": each of its 7 series, and no other.
func gcCounts(t *testing.T) map[string]float64 {
	t.Helper()
	if n, err := testutil.GatherAndCount(ctrlmetrics.Registry, "berth_controller_ipclaim_gc_total"); err != nil || n != 7 {
		t.Fatalf("berth_controller_ipclaim_gc_total has %d series (%v), want 7", n, err)
	}
	out := map[string]float64{}
	for _, action := range []string{"reserved", "freed"} {
		for _, reason := range []string{ipclaimgc.ReasonPodGone, ipclaimgc.ReasonNodeGone, "Expired", "AppGone", "QuarantineEnded"} {
			v, n := promtest.Value(t, ctrlmetrics.Registry, "berth_controller_ipclaim_gc_total", map[string]string{"action": action, "reason": reason})
			if n == 1 {
				out[action+"/"+reason] = v
			}
		}
	}
	if len(out) != 7 {
		t.Fatalf("berth_controller_ipclaim_gc_total has series %v, want reserved/{PodGone,NodeGone} and freed/{PodGone,NodeGone,Expired,AppGone,QuarantineEnded}", out)
	}
	return out
}

// TestReconciler_agentActive: the claims of pods whose objects are gone
// (a force delete, PodGC of a deleted Node's pods) stay with their node
// while its agent renews its lease: the old sandbox may still use the
// address, and the agent releases it once the runtime has no sandbox of
// it. Once the agent has been silent for AgentGrace, the controller acts.
func TestReconciler_agentActive(t *testing.T) {
	const grace = 3 * time.Second
	c, cfg := start(t, ipclaimgc.Config{NodeGrace: time.Second, AgentGrace: grace})
	ctx := context.Background()
	create(t, c, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.6.0.0/24"}})
	create(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: agentlease.DefaultNamespace}})
	create(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}})
	create(t, c, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	sel := &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}
	create(t, c, &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "db"}, Spec: appsv1.StatefulSetSpec{Selector: sel,
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel.MatchLabels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}}})
	db := &v1alpha1.App{Kind: v1alpha1.AppStatefulSet, Namespace: "ns", Name: "db", Ordinal: ptr.To(int32(0))}

	// n1's agent renews its lease, as berth-agent does.
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	renewer, err := agentlease.New(agentlease.Config{Leases: cs.CoordinationV1(), Node: "n1", Interval: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stopRenewing := runnable.Start(t, time.Minute, renewer.Start)
	poll.Until(t, 10*time.Second, "n1's agent lease", func() bool {
		_, err := cs.CoordinationV1().Leases(agentlease.DefaultNamespace).Get(ctx, agentlease.Name("n1"), metav1.GetOptions{})
		return err == nil
	})

	// db-0 was force-deleted on n1: its object is gone, its sandbox may
	// not be.
	create(t, c, claim("p-10-6-0-1", "10.6.0.1", v1alpha1.ClaimBound, v1alpha1.PodRef{Namespace: "ns", Name: "db-0", UID: "uid-forced"}, "n1", db))
	// A claim on a node whose agent never wrote a lease (an older agent):
	// the controller acts at once, as before.
	create(t, c, claim("p-10-6-0-2", "10.6.0.2", v1alpha1.ClaimBound, v1alpha1.PodRef{Namespace: "ns", Name: "db-1", UID: "uid-old-agent"}, "n2", db))

	poll.Until(t, 20*time.Second, "the claim of a pod gone from a node whose agent is active to be left to the agent", func() bool {
		cl, ok := get(t, c, "p-10-6-0-1")
		if !ok {
			return false
		}
		cond := meta.FindStatusCondition(cl.Status.Conditions, ipclaimgc.ConditionOrphaned)
		return cl.Spec.State == v1alpha1.ClaimBound && cond != nil && cond.Reason == ipclaimgc.ReasonAgentActive && cond.Status == metav1.ConditionFalse
	})
	poll.Until(t, 20*time.Second, "the claim on a node without an agent lease to be reserved", func() bool {
		cl, ok := get(t, c, "p-10-6-0-2")
		return ok && cl.Spec.State == v1alpha1.ClaimReserved
	})
	// Twice the grace period while the agent renews: still the old
	// sandbox's.
	deadline := time.Now().Add(2 * grace)
	for time.Now().Before(deadline) {
		if cl, ok := get(t, c, "p-10-6-0-1"); !ok || cl.Spec.State != v1alpha1.ClaimBound {
			t.Fatalf("the claim of db-0, whose node's agent is active, was released by the controller: %+v", cl)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The agent falls silent (its node died): after the grace period the
	// controller reserves the address for db-0's successor.
	stopRenewing()
	poll.Until(t, 4*grace, "the claim to be reserved once the agent has been silent past the grace period", func() bool {
		cl, ok := get(t, c, "p-10-6-0-1")
		if !ok {
			return false
		}
		cond := meta.FindStatusCondition(cl.Status.Conditions, ipclaimgc.ConditionOrphaned)
		return cl.Spec.State == v1alpha1.ClaimReserved && cond != nil && cond.Reason == ipclaimgc.ReasonPodGone && cond.Status == metav1.ConditionTrue
	})
}

// TestReconciler_Reconcile_badReservationTTL: a pool whose reservationTTL
// does not parse (stored before the CRD checked it) still has its pods'
// addresses reserved for their app, for the default 24h.
func TestReconciler_Reconcile_badReservationTTL(t *testing.T) {
	c, _ := startWith(t, envtest.CRDsWithoutRules(t, crdDir, "IPPool", "spec", "reservationTTL"), ipclaimgc.Config{})
	create(t, c, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.5.0.0/24", ReservationTTL: "1d"}})
	create(t, c, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "alive"}})
	web := &v1alpha1.App{Kind: v1alpha1.AppGroup, Namespace: "ns", Name: "web"}
	create(t, c, claim("p-10-5-0-9", "10.5.0.9", v1alpha1.ClaimBound, v1alpha1.PodRef{Namespace: "ns", Name: "vanished", UID: "uid-vanished"}, "alive", web))
	start := time.Now()
	var got *v1alpha1.IPClaim
	poll.Until(t, 20*time.Second, "the claim of a vanished pod reserved", func() bool {
		got, _ = get(t, c, "p-10-5-0-9")
		return got != nil && got.Spec.State == v1alpha1.ClaimReserved
	})
	if got.Spec.ReservedUntil == nil {
		t.Fatal("reserved without reservedUntil")
	}
	if until := got.Spec.ReservedUntil.Time; until.Before(start.Add(v1alpha1.DefaultReservationTTL-time.Minute)) || until.After(time.Now().Add(v1alpha1.DefaultReservationTTL+time.Minute)) {
		t.Errorf("reservedUntil %s, want about %s from now", until, v1alpha1.DefaultReservationTTL)
	}
}
