package ippoolstatus_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/controller/ippoolstatus"
	"github.com/berth-io/berth/test/envtest"
	"github.com/berth-io/berth/test/promtest"
	"github.com/berth-io/berth/test/runnable"
)

// start runs the reconciler against a real kube-apiserver and returns a
// client of it.
func start(t *testing.T) client.WithWatch {
	return startWith(t, crdDir, nil)
}

var crdDir = filepath.Join("..", "..", "deploy", "base", "crds")

// startWith is start with the CRDs of dir, running before (if not nil)
// before the reconciler starts.
func startWith(t *testing.T, dir string, before func(cfg *rest.Config)) client.WithWatch {
	ctrllog.SetLogger(logr.Discard())
	cfg := envtest.Start(t, envtest.Options{CRDDirectoryPaths: []string{dir}})
	if before != nil {
		before(cfg)
	}
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = v1alpha1.AddToScheme(s)
	// Each test runs its own manager: the controller's name repeats.
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: s, Metrics: metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := ippoolstatus.New(mgr.GetClient())
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	runnable.Start(t, time.Minute, mgr.Start)
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestReconciler_Reconcile(t *testing.T) {
	c := start(t)
	ctx := context.Background()

	// /30 without network and broadcast: 2 addresses.
	if err := c.Create(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "small"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.6.0.0/30"}}); err != nil {
		t.Fatal(err)
	}
	for i, st := range []v1alpha1.ClaimState{v1alpha1.ClaimBound, v1alpha1.ClaimReserved} {
		addr := []string{"10.6.0.1", "10.6.0.2"}[i]
		if err := c.Create(ctx, &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: "small-" + addr},
			Spec: v1alpha1.IPClaimSpec{Pool: "small", Address: addr, State: st, Pod: v1alpha1.PodRef{Namespace: "n", Name: "p", UID: "u"}}}); err != nil {
			t.Fatal(err)
		}
	}
	waitPool(ctx, t, c, "small", func(p *v1alpha1.IPPool) bool {
		st := p.Status
		return st.Size == 2 && st.Bound == 1 && st.Reserved == 1 && st.Free == 0 && st.ObservedGeneration == p.Generation &&
			meta.IsStatusConditionTrue(st.Conditions, ippoolstatus.ConditionReady) && meta.IsStatusConditionTrue(st.Conditions, ippoolstatus.ConditionExhausted)
	})

	// The leader's gauges report that status; a standby replica reports
	// none.
	want := `# HELP berth_controller_ippool_addresses Addresses of an IPPool by state: size (all it hands out), bound, reserved, conflict (out of use after another host answered for it), free; its status as last counted (at most 1 s behind its claims).
# TYPE berth_controller_ippool_addresses gauge
berth_controller_ippool_addresses{pool="small",state="bound"} 1
berth_controller_ippool_addresses{pool="small",state="conflict"} 0
berth_controller_ippool_addresses{pool="small",state="free"} 0
berth_controller_ippool_addresses{pool="small",state="reserved"} 1
berth_controller_ippool_addresses{pool="small",state="size"} 2
# HELP berth_controller_ippool_condition 1 when the IPPool's condition (Ready, Exhausted) is True, else 0.
# TYPE berth_controller_ippool_condition gauge
berth_controller_ippool_condition{condition="Exhausted",pool="small"} 1
berth_controller_ippool_condition{condition="Ready",pool="small"} 1
`
	// The leader's gauges read the pool from the manager's cache, which
	// may be a moment behind the status waitPool read from the API server.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		err := testutil.GatherAndCompare(ctrlmetrics.Registry, strings.NewReader(want), "berth_controller_ippool_addresses", "berth_controller_ippool_condition")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the leader's gauges 10s after the pool's status was written: %v", err)
			break
		}
	}
	reg, elected := prometheus.NewRegistry(), make(chan struct{})
	if err := ippoolstatus.RegisterMetrics(reg, c, elected); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Errorf("a standby replica reports %d series (%v), want none", n, err)
	}
	close(elected)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "berth_controller_ippool_addresses", "berth_controller_ippool_condition"); err != nil {
		t.Errorf("once elected: %v", err)
	}

	// A newer pool overlapping it is not Ready, until the older one goes
	// (created in the same second: the name decides, "small" < "z-late").
	late := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "z-late"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.6.0.0/29"}}
	if err := c.Create(ctx, late); err != nil {
		t.Fatal(err)
	}
	// An address of it another host answered for (berth-netcheck): out of
	// use until its quarantine ends.
	until := metav1.NewTime(time.Now().Add(time.Hour))
	if err := c.Create(ctx, &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: "z-late-10.6.0.5"},
		Spec: v1alpha1.IPClaimSpec{Pool: "z-late", Address: "10.6.0.5", State: v1alpha1.ClaimConflict, ReservedUntil: &until,
			Pod: v1alpha1.PodRef{Namespace: "n", Name: "q", UID: "uq"}}}); err != nil {
		t.Fatal(err)
	}
	waitPool(ctx, t, c, "z-late", func(p *v1alpha1.IPPool) bool {
		cond := meta.FindStatusCondition(p.Status.Conditions, ippoolstatus.ConditionReady)
		return cond != nil && cond.Status == metav1.ConditionFalse && cond.Reason == "Overlaps" &&
			cond.Message == "its addresses overlap those of the older pool small (10.6.0.1 among them), which keeps them: "+
				"the same address could go to two pods; make the pools disjoint (cidr, includeRanges, excludeRanges)"
	})
	waitPool(ctx, t, c, "small", func(p *v1alpha1.IPPool) bool {
		return meta.IsStatusConditionTrue(p.Status.Conditions, ippoolstatus.ConditionReady)
	})
	// Deleting "small" while a pod holds 10.6.0.1: its reservation of
	// 10.6.0.2 goes, the pool stays (and keeps its addresses from z-late)
	// until the pod releases 10.6.0.1.
	var small v1alpha1.IPPool
	if err := c.Get(ctx, client.ObjectKey{Name: "small"}, &small); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(small.Finalizers, v1alpha1.FinalizerPoolInUse) {
		t.Fatalf("pool small has finalizers %v, want %s", small.Finalizers, v1alpha1.FinalizerPoolInUse)
	}
	if err := c.Delete(ctx, &small); err != nil {
		t.Fatal(err)
	}
	waitPool(ctx, t, c, "small", func(p *v1alpha1.IPPool) bool {
		cond := meta.FindStatusCondition(p.Status.Conditions, ippoolstatus.ConditionReady)
		return p.DeletionTimestamp != nil && cond != nil && cond.Status == metav1.ConditionFalse && cond.Reason == "Deleting" &&
			cond.Message == "being deleted: it goes once its pods release their addresses; 1 still held: 10.6.0.1 (pod n/p)" &&
			p.Status.Bound == 1 && p.Status.Reserved == 0
	})
	if err := c.Get(ctx, client.ObjectKey{Name: "small-10.6.0.2"}, &v1alpha1.IPClaim{}); !apierrors.IsNotFound(err) {
		t.Errorf("reserved claim of the pool being deleted: %v, want it deleted", err)
	}
	waitPool(ctx, t, c, "z-late", func(p *v1alpha1.IPPool) bool {
		cond := meta.FindStatusCondition(p.Status.Conditions, ippoolstatus.ConditionReady)
		return cond != nil && cond.Reason == "Overlaps"
	})
	// The pod's DEL releases it (the pool being deleted: the claim goes).
	if err := c.Delete(ctx, &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: "small-10.6.0.1"}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for err := c.Get(ctx, client.ObjectKey{Name: "small"}, &small); !apierrors.IsNotFound(err); err = c.Get(ctx, client.ObjectKey{Name: "small"}, &small) {
		if time.Now().After(deadline) {
			t.Fatalf("pool small still there 20s after its last claim went: %v, finalizers %v, status %+v", err, small.Finalizers, small.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitPool(ctx, t, c, "z-late", func(p *v1alpha1.IPPool) bool {
		st := p.Status
		return meta.IsStatusConditionTrue(st.Conditions, ippoolstatus.ConditionReady) &&
			st.Size == 6 && st.Bound == 0 && st.Reserved == 0 && st.Conflict == 1 && st.Free == 5
	})
	// The gauges follow: small's series are gone.
	if n, err := testutil.GatherAndCount(reg, "berth_controller_ippool_addresses"); err != nil || n != 5 {
		t.Errorf("%d pool address series after small went (%v), want z-late's 5", n, err)
	}
	if v, n := promtest.Value(t, reg, "berth_controller_ippool_addresses", map[string]string{"pool": "z-late", "state": "conflict"}); n != 1 || v != 1 {
		t.Errorf("z-late's conflict gauge: %v (%d series), want 1", v, n)
	}
	// Deleting z-late: no pod holds its addresses; its quarantined claim
	// goes with it.
	if err := c.Delete(ctx, late); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for err := c.Get(ctx, client.ObjectKey{Name: "z-late"}, late); !apierrors.IsNotFound(err); err = c.Get(ctx, client.ObjectKey{Name: "z-late"}, late) {
		if time.Now().After(deadline) {
			t.Fatalf("pool z-late still there 20s after its deletion, with only a Conflict claim: %v, status %+v", err, late.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := c.Get(ctx, client.ObjectKey{Name: "z-late-10.6.0.5"}, &v1alpha1.IPClaim{}); !apierrors.IsNotFound(err) {
		t.Errorf("Conflict claim of the deleted pool: %v, want it deleted", err)
	}
}

// TestReconciler_burst: 200 claims created as fast as 8 writers can
// (a rollout) cost the pool one recount and status write per
// ippoolstatus.RecountDelay, not one per claim, and the status ends exact.
// The pool's status writes recount neither it nor the 10 other pools.
func TestReconciler_burst(t *testing.T) {
	c := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range 11 {
		name, cidr := fmt.Sprint("other-", i), fmt.Sprintf("10.8.%d.0/24", i)
		if i == 10 {
			name, cidr = "burst", "10.7.0.0/24"
		}
		if err := c.Create(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.IPPoolSpec{CIDR: cidr}}); err != nil {
			t.Fatal(err)
		}
		waitPool(ctx, t, c, name, func(p *v1alpha1.IPPool) bool {
			return meta.IsStatusConditionTrue(p.Status.Conditions, ippoolstatus.ConditionReady)
		})
	}
	// The recounts of the pools' creation (each pool's own, and the
	// others' overlap checks) end.
	reconciles := settled(t)
	var pools v1alpha1.IPPoolList
	if err := c.List(ctx, &pools); err != nil {
		t.Fatal(err)
	}
	w, err := c.Watch(ctx, &v1alpha1.IPPoolList{}, client.MatchingFields{"metadata.name": "burst"}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: pools.ResourceVersion}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	const n = 200
	start := time.Now()
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range jobs {
				addr := fmt.Sprintf("10.7.0.%d", i+1)
				if err := c.Create(ctx, &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: "burst-" + addr},
					Spec: v1alpha1.IPClaimSpec{Pool: "burst", Address: addr, State: v1alpha1.ClaimBound, Pod: v1alpha1.PodRef{Namespace: "n", Name: fmt.Sprint("p", i), UID: "u"}}}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	created := time.Since(start)

	writes, done := 0, false
	for ev := range w.ResultChan() {
		p, ok := ev.Object.(*v1alpha1.IPPool)
		if !ok {
			t.Fatalf("watch: %v %v", ev.Type, ev.Object)
		}
		writes++
		if p.Status.Bound == n {
			if p.Status.Reserved != 0 || p.Status.Free != 254-n {
				t.Errorf("status %+v, want %d bound, 0 reserved, %d free", p.Status, n, 254-n)
			}
			done = true
			break
		}
	}
	counted := time.Since(start)
	if !done {
		t.Fatalf("watch ended after %s and %d status writes before the pool counted %d bound claims", counted, writes, n)
	}
	if limit := int(counted/ippoolstatus.RecountDelay) + 2; writes > limit {
		t.Errorf("%d claims created in %s, counted after %s with %d status writes; want at most %d (one per %s, and 1)",
			n, created, counted, writes, limit, ippoolstatus.RecountDelay)
	}
	recounts := settled(t) - reconciles
	// A claim's event may reach the queue just after a recount listed the
	// claim: one recount more, which writes nothing. Without the spec-only
	// filter on pool events, each write recounts all 11 pools.
	if recounts > float64(2*writes+1) {
		t.Errorf("%d status writes of pool burst, %v recounts of the 11 pools; want at most two per write, and 1", writes, recounts)
	}
	t.Logf("%d claims created in %s, counted after %s with %d status writes and %v recounts", n, created, counted, writes, recounts)
}

// settled waits until the reconciler has not run for 1.5 RecountDelays
// (a recount queued is then done) and returns reconcileCount.
func settled(t *testing.T) float64 {
	t.Helper()
	n := reconcileCount(t)
	for deadline := time.Now().Add(20 * time.Second); ; {
		time.Sleep(ippoolstatus.RecountDelay * 3 / 2)
		now := reconcileCount(t)
		if now == n {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reconciler still runs after 20s: %v reconciles", now)
		}
		n = now
	}
}

// reconcileCount is controller-runtime's count of the reconciler's runs.
func reconcileCount(t *testing.T) float64 {
	t.Helper()
	n, _ := promtest.Value(t, ctrlmetrics.Registry, "controller_runtime_reconcile_total", map[string]string{"controller": ippoolstatus.ControllerName})
	return n
}

// waitPool polls the pool until ok holds, for at most 20s.
func waitPool(ctx context.Context, t *testing.T, c client.Client, name string, ok func(*v1alpha1.IPPool) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var p v1alpha1.IPPool
		if err := c.Get(ctx, client.ObjectKey{Name: name}, &p); err != nil {
			t.Fatal(err)
		}
		if ok(&p) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool %s: status %+v", name, p.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReconciler_Reconcile_storedBadReservationTTL: a pool whose
// reservationTTL was stored before the API server checked it ("1d", as
// IPPools admitted by older CRDs may hold) lists like any other, and the
// pool is Ready=False with reason InvalidSpec saying what to write.
func TestReconciler_Reconcile_storedBadReservationTTL(t *testing.T) {
	ctx := context.Background()
	// The CRD of deploy/base without the rule on reservationTTL, as it was
	// before the rule existed.
	dir := envtest.CRDsWithoutRules(t, crdDir, "IPPool", "spec", "reservationTTL")
	strict, err := os.ReadFile(filepath.Join(crdDir, "berth.io_ippools.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	c := startWith(t, dir, func(cfg *rest.Config) {
		// Written as YAML would be, whatever the Go type of the field.
		raw, err := client.New(cfg, client.Options{})
		if err != nil {
			t.Fatal(err)
		}
		bad := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "berth.io/v1alpha1", "kind": "IPPool", "metadata": map[string]any{"name": "days"},
			"spec": map[string]any{"cidr": "10.7.0.0/24", "reservationTTL": "1d"},
		}}
		if err := raw.Create(ctx, bad); err != nil {
			t.Fatalf("store a pool with reservationTTL 1d under the lax CRD: %v", err)
		}
		// Now the CRD of deploy/base: the stored pool stays as it is.
		var cur unstructured.Unstructured
		cur.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
		if err := raw.Get(ctx, client.ObjectKey{Name: "ippools.berth.io"}, &cur); err != nil {
			t.Fatal(err)
		}
		var want map[string]any
		if err := yaml.Unmarshal(strict, &want); err != nil {
			t.Fatal(err)
		}
		cur.Object["spec"] = want["spec"]
		if err := raw.Update(ctx, &cur); err != nil {
			t.Fatalf("install the strict CRD: %v", err)
		}
	})
	// Every informer lists pools with the typed client: the list must
	// decode.
	var list v1alpha1.IPPoolList
	if err := c.List(ctx, &list); err != nil {
		t.Fatalf("list pools with one stored with reservationTTL 1d: %v", err)
	}
	if len(list.Items) != 1 || list.Items[0].Spec.ReservationTTL != "1d" {
		t.Fatalf("pools listed: %+v", list.Items)
	}
	want := `reservationTTL "1d": time: unknown unit "d" in duration "1d" (want a positive duration such as 24h, 90m or 1h30m; 7 days is 168h)`
	waitPool(ctx, t, c, "days", func(p *v1alpha1.IPPool) bool {
		cond := meta.FindStatusCondition(p.Status.Conditions, ippoolstatus.ConditionReady)
		return cond != nil && cond.Status == metav1.ConditionFalse && cond.Reason == "InvalidSpec" && cond.Message == want
	})
	// The API server now refuses the value: another pool cannot get it.
	err = c.Create(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "days2"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.8.0.0/24", ReservationTTL: "1d"}})
	if !apierrors.IsInvalid(err) {
		t.Errorf("a new pool with reservationTTL 1d: err = %v, want Invalid", err)
	}
}
