// Command cachemem measures the heap an informer cache of Berth's holds for
// a cluster's pods, ReplicaSets and IPClaims: it fills one real
// kube-apiserver + etcd (the envtest binaries) with -pods running
// Deployment pods (status as kubelet writes it), one ReplicaSet per
// -pods-per-rs pods and one Bound claim per pod, then starts a cache of
// these three kinds as berth-agent did before internal/cachetrim (only
// managedFields stripped) and as it does now (cachetrim.Options), one
// after the other in this process, and prints the heap each holds once
// synced (after a GC): informers, indexes and objects together. In the
// trimmed cache it then times listing the pool's claims (all -pods of
// them) the way berth-controller's pool status recount did (deep copies)
// and does (ippoolstatus.Claims). Last, it measures what -watchers such
// caches (as -watchers agents') cost per pod update (watchCost).
//
//	KUBEBUILDER_ASSETS=$(make -s print-envtest-assets) go run ./test/bench/cachemem -pods 10000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sync/errgroup"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/controller/ippoolstatus"
	"github.com/berth-io/berth/internal/cachetrim"
	berthenvtest "github.com/berth-io/berth/test/envtest"
	"github.com/berth-io/berth/test/kubeobjects"
)

func main() {
	ctrllog.SetLogger(logr.Discard())
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "cachemem:", err)
		os.Exit(1)
	}
}

func run() error {
	pods := flag.Int("pods", 10000, "running pods (and as many claims)")
	perRS := flag.Int("pods-per-rs", 3, "pods per ReplicaSet")
	rounds := flag.Int("rounds", 21, "rounds of each way of listing the pool's claims")
	watchers := flag.Int("watchers", 16, "caches as berth-agent's watching while -events pod updates are made (0: skip)")
	events := flag.Int("events", 2000, "pod updates for -watchers")
	crds := flag.String("crds", "deploy/base/crds", "Berth's CRDs")
	flag.Parse()
	if *pods < 1 || *perRS < 1 || *rounds < 1 || *watchers < 0 || *events < 1 {
		return errors.New("-pods, -pods-per-rs, -rounds and -events must be at least 1, -watchers at least 0")
	}
	env := &envtest.Environment{BinaryAssetsDirectory: os.Getenv("KUBEBUILDER_ASSETS"), CRDDirectoryPaths: []string{*crds}, ErrorIfCRDPathMissing: true}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("start kube-apiserver: %w", err)
	}
	defer func() { _ = env.Stop() }()
	cfg.QPS, cfg.Burst = -1, 0
	scheme := kruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	start := time.Now()
	if err := fill(ctx, c, *pods, *perRS); err != nil {
		return err
	}
	rss := (*pods + *perRS - 1) / *perRS
	fmt.Printf("%d pods, %d ReplicaSets, %d IPClaims created in %s; kube-apiserver %s\n\n", *pods, rss, *pods, time.Since(start).Round(time.Second), berthenvtest.ServerVersion(cfg))
	fmt.Println("| cache | heap once synced | per pod (with its claim and 1/" + fmt.Sprint(*perRS) + " ReplicaSet) | vs. managedFields stripped |")
	fmt.Println("|---|---|---|---|")
	var base float64
	var counts []countResult
	for _, tc := range []struct {
		name  string
		opts  cache.Options
		count bool
	}{
		{"managedFields stripped (berth-agent before internal/cachetrim)", cache.Options{Scheme: scheme, DefaultTransform: cache.TransformStripManagedFields()}, false},
		{"cachetrim.Options (berth-agent and berth-controller now)", cachetrim.Options(cache.Options{Scheme: scheme}), true},
	} {
		heap, err := synced(ctx, cfg, tc.opts, *pods, func(ca cache.Cache) (err error) {
			if tc.count {
				counts, err = countPool(ctx, ca, *pods, *rounds)
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("%s: %w", tc.name, err)
		}
		if base == 0 {
			base = heap
		}
		fmt.Printf("| %s | %.1f MB | %.1f KB | %.2fx |\n", tc.name, heap/1e6, heap/float64(*pods)/1e3, heap/base)
	}
	fmt.Printf("\nOne pool's %d claims listed from the trimmed cache, as berth-controller's pool status recount does (its spec.pool index), median of %d rounds:\n\n", *pods, *rounds)
	fmt.Println("| list | time | allocated | vs. deep copies |")
	fmt.Println("|---|---|---|---|")
	for _, r := range counts {
		fmt.Printf("| %s | %.2f ms | %.1f MB | %.3fx time, %.3fx allocated |\n", r.name, r.time.Seconds()*1e3, r.bytes/1e6,
			r.time.Seconds()/counts[0].time.Seconds(), r.bytes/counts[0].bytes)
	}
	if *watchers == 0 {
		return nil
	}
	return watchCost(ctx, cfg, c, cachetrim.Options(cache.Options{Scheme: scheme}), *watchers, *events)
}

type countResult struct {
	name  string
	time  time.Duration
	bytes float64
}

// countPool times listing the pool's claims through ippoolstatus' index:
// deep copies (client-go's default, and berth-controller's until it used
// ippoolstatus.Claims) against ippoolstatus.Claims. Each round is checked
// to find every claim.
func countPool(ctx context.Context, ca cache.Cache, want, rounds int) ([]countResult, error) {
	deep := func() (int, error) {
		var l v1alpha1.IPClaimList
		err := ca.List(ctx, &l, client.MatchingFields{ippoolstatus.IndexPool: "pods"})
		return len(l.Items), err
	}
	shallow := func() (int, error) {
		l, err := ippoolstatus.Claims(ctx, ca, "pods")
		return len(l), err
	}
	var out []countResult
	for _, m := range []struct {
		name string
		list func() (int, error)
	}{{"deep copies (client.List's default)", deep}, {"ippoolstatus.Claims (shallow copies)", shallow}} {
		times, allocs := make([]time.Duration, rounds), make([]float64, rounds)
		for i := range rounds {
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			n, err := m.list()
			times[i] = time.Since(start)
			runtime.ReadMemStats(&after)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", m.name, err)
			}
			if n != want {
				return nil, fmt.Errorf("%s: listed %d claims, want %d", m.name, n, want)
			}
			allocs[i] = float64(after.TotalAlloc - before.TotalAlloc)
		}
		slices.Sort(times)
		slices.Sort(allocs)
		out = append(out, countResult{m.name, times[rounds/2], allocs[rounds/2]})
	}
	return out, nil
}

// synced starts a cache of pods, ReplicaSets and IPClaims (indexed by
// pool, as berth-controller's), waits until it holds every pod, and
// returns the heap it added (after a GC); then it calls then with the
// cache. The cache is stopped and dropped before it returns.
func synced(ctx context.Context, cfg *rest.Config, opts cache.Options, pods int, then func(cache.Cache) error) (float64, error) {
	before := heap()
	ca, err := cache.New(cfg, opts)
	if err != nil {
		return 0, err
	}
	if err := ippoolstatus.IndexClaims(ctx, ca); err != nil {
		return 0, err
	}
	cctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = ca.Start(cctx); close(done) }()
	defer func() { stop(); <-done; runtime.GC() }()
	for _, o := range []client.Object{&corev1.Pod{}, &appsv1.ReplicaSet{}, &v1alpha1.IPClaim{}} {
		if _, err := ca.GetInformer(ctx, o); err != nil {
			return 0, err
		}
	}
	if !ca.WaitForCacheSync(ctx) {
		return 0, errors.New("cache did not sync")
	}
	var l corev1.PodList
	if err := ca.List(ctx, &l); err != nil {
		return 0, fmt.Errorf("list pods: %w", err)
	}
	if len(l.Items) != pods {
		return 0, fmt.Errorf("cache lists %d pods, want %d", len(l.Items), pods)
	}
	l = corev1.PodList{}
	after := heap()
	return after - before, then(ca)
}

func heap() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc)
}

// fill creates the objects with 16 writers.
func fill(ctx context.Context, c client.Client, pods, perRS int) error {
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}); err != nil {
		return err
	}
	return parallel(ctx, 16, pods, func(ctx context.Context, i int) error { return create(ctx, c, i, perRS) })
}

// parallel calls f(ctx, i) for i in [0, n) with that many workers and
// returns the first error; after one, no new call starts and ctx is
// cancelled.
func parallel(ctx context.Context, workers, n int, f func(ctx context.Context, i int) error) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		g.Go(func() error { return f(ctx, i) })
	}
	return g.Wait()
}

// create makes pod i (kubeobjects.RunningPod, its status written as
// kubelet would), its claim and, for the first pod of each group of perRS,
// their ReplicaSet. The API server sets what it owns (uid, versions,
// managedFields).
func create(ctx context.Context, c client.Client, i, perRS int) error {
	node, ip := fmt.Sprintf("node-%d", i%100), fmt.Sprintf("10.%d.%d.%d", 128+i/65536, i/256%256, i%256)
	p := kubeobjects.RunningPod(fmt.Sprintf("web%d", i/perRS), i, node, ip)
	if i%perRS == 0 {
		rs := kubeobjects.ReplicaSet(p, int32(perRS))
		serverOwned(&rs.ObjectMeta)
		if err := c.Create(ctx, rs); err != nil {
			return fmt.Errorf("replicaset %s: %w", rs.Name, err)
		}
	}
	status := p.Status
	serverOwned(&p.ObjectMeta)
	if err := c.Create(ctx, p); err != nil {
		return fmt.Errorf("pod %d: %w", i, err)
	}
	p.Status = status
	if err := c.Status().Update(ctx, p); err != nil {
		return fmt.Errorf("pod %d status: %w", i, err)
	}
	claim := &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pods-%05d", i),
		Labels: map[string]string{v1alpha1.LabelPool: "pods", v1alpha1.LabelNode: node, v1alpha1.LabelPodUID: string(p.UID)}},
		Spec: v1alpha1.IPClaimSpec{Pool: "pods", Address: ip, App: &v1alpha1.App{Kind: v1alpha1.AppDeployment, Namespace: "shop", Name: p.Labels["app"]},
			Pod: v1alpha1.PodRef{Namespace: "shop", Name: p.Name, UID: p.UID}, ContainerID: fmt.Sprintf("%064x", i), Interface: "eth0",
			Node: node, State: v1alpha1.ClaimBound}}
	if err := c.Create(ctx, claim); err != nil {
		return fmt.Errorf("claim %d: %w", i, err)
	}
	return nil
}

// serverOwned clears what the API server sets on create.
func serverOwned(m *metav1.ObjectMeta) {
	m.UID, m.ResourceVersion, m.Generation, m.CreationTimestamp, m.ManagedFields = "", "", 0, metav1.Time{}, nil
}
