package ipamserver_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/cachetrim"
	"github.com/berth-io/berth/internal/ipalloc"
	"github.com/berth-io/berth/test/envtest"
)

func init() { ctrllog.SetLogger(logr.Discard()) }

func scheme(t testing.TB) *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func startAPI(t testing.TB) (*rest.Config, client.Client) {
	cfg := envtest.Start(t, envtest.Options{CRDDirectoryPaths: []string{filepath.Join("..", "..", "deploy", "base", "crds")}})
	cfg.QPS, cfg.Burst = -1, 0 // no client-side throttling: measure the API server
	c, err := client.New(cfg, client.Options{Scheme: scheme(t)})
	if err != nil {
		t.Fatal(err)
	}
	return cfg, c
}

// newNodeStore is one simulated node's store: its own informer cache.
func newNodeStore(t testing.TB, ctx context.Context, cfg *rest.Config, c client.Client) *ipamserver.Store {
	t.Helper()
	st, _ := newNodeCache(t, ctx, cfg, c)
	return st
}

// newNodeCache is newNodeStore, and the informer cache it reads.
func newNodeCache(t testing.TB, ctx context.Context, cfg *rest.Config, c client.Client) (*ipamserver.Store, cache.Cache) {
	t.Helper()
	ca, err := cache.New(cfg, cachetrim.Options(cache.Options{Scheme: scheme(t)}))
	if err != nil {
		t.Fatal(err)
	}
	if err := ipamserver.IndexClaims(ctx, ca); err != nil {
		t.Fatal(err)
	}
	go func() { _ = ca.Start(ctx) }()
	for _, obj := range []client.Object{&v1alpha1.IPClaim{}, &v1alpha1.IPPool{}, &corev1.Pod{}, &corev1.Namespace{}, &appsv1.ReplicaSet{}} {
		if _, err := ca.GetInformer(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	if !ca.WaitForCacheSync(ctx) {
		t.Fatal("cache did not sync")
	}
	return ipamserver.NewStore(ca, c, c), ca
}

// TestStore_concurrentNodes: 64 allocators, each a node with its own
// informer cache, hammer one pool through a real API server with pods of a
// few Deployments, a StatefulSet and opted-out pods being created, given
// addresses, deleted and released. No address is ever held by two pods'
// networks at once, and once every pod is gone no claim is Bound.
func TestStore_concurrentNodes(t *testing.T) {
	const nodes, podsPerNode = 64, 8
	cfg, c := startAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	mustCreate(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}})
	mustCreate(t, c, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "hammer"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.10.0.0/22"}})
	deployments := []string{"a", "b", "c", "d"}
	for _, d := range deployments {
		mustCreate(t, c, &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: d + "-rs", Labels: map[string]string{"app": d},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: d, UID: "uid-" + "d", Controller: ptr.To(true)}}},
			Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": d}},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": d}},
					Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}},
		})
	}

	var (
		mu     sync.Mutex
		holder = map[string]string{} // address -> pod whose network has it
		errs   []string
		stats  = map[string]int{}
	)
	var wg sync.WaitGroup
	start := time.Now()
	for n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := newNodeStore(t, ctx, cfg, c)
			alloc, err := ipalloc.New(ipalloc.Config{Store: st, Node: fmt.Sprintf("node-%d", n)})
			if err != nil {
				t.Error(err)
				return
			}
			r := rand.New(rand.NewPCG(uint64(n), 7))
			for i := range podsPerNode {
				pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("p-%d-%d", n, i)},
					Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
				switch k := r.IntN(10); {
				case k < 7:
					d := deployments[r.IntN(len(deployments))]
					pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: d + "-rs", UID: "rs", Controller: ptr.To(true)}}
				case k < 9:
					pod.Annotations = map[string]string{v1alpha1.AnnotationRetain: "false"}
				default:
					pod.Name = fmt.Sprintf("db-%d", n*podsPerNode+i)
					pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "db", UID: "ss", Controller: ptr.To(true)}}
				}
				if err := c.Create(ctx, pod); err != nil {
					t.Errorf("create pod: %v", err)
					return
				}
				id := "c-" + string(pod.UID)
				var als []ipalloc.Allocation
				for try := 0; ; try++ {
					als, err = alloc.Allocate(ctx, ipalloc.Request{ContainerID: id, IfName: "eth0", PodNamespace: "ns", PodName: pod.Name, PodUID: pod.UID})
					if err == nil || !ipalloc.Retryable(err) || try > 50 {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Sprintf("ADD %s: %v", pod.Name, err))
					mu.Unlock()
					continue
				}
				addr := als[0].Address.Addr().String()
				if h, ok := holder[addr]; ok {
					errs = append(errs, fmt.Sprintf("DUPLICATE: %s got %s, held by %s", pod.Name, addr, h))
				}
				holder[addr] = pod.Name
				if als[0].Reused {
					stats["hit"]++
				} else {
					stats["fresh"]++
				}
				mu.Unlock()
				// Half the pods go away at once; the rest at the end.
				if r.IntN(2) == 0 {
					continue
				}
				release(t, ctx, c, alloc, pod, id, &mu, holder, addr)
			}
			// Everything left on this node goes.
			var pods corev1.PodList
			if err := c.List(ctx, &pods, client.InNamespace("ns")); err != nil {
				t.Error(err)
				return
			}
			for i := range pods.Items {
				p := &pods.Items[i]
				var mine bool
				for j := range podsPerNode {
					mine = mine || p.Name == fmt.Sprintf("p-%d-%d", n, j) || p.Name == fmt.Sprintf("db-%d", n*podsPerNode+j)
				}
				if !mine {
					continue
				}
				mu.Lock()
				addr := ""
				for a, h := range holder {
					if h == p.Name {
						addr = a
					}
				}
				mu.Unlock()
				release(t, ctx, c, alloc, p, "c-"+string(p.UID), &mu, holder, addr)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, e := range errs {
		t.Error(e)
	}
	var claims v1alpha1.IPClaimList
	if err := c.List(ctx, &claims); err != nil {
		t.Fatal(err)
	}
	reserved := 0
	for _, cl := range claims.Items {
		if cl.Spec.State != v1alpha1.ClaimReserved || cl.Spec.App == nil {
			t.Errorf("claim %s left %s (app %v) after every pod is gone", cl.Name, cl.Spec.State, cl.Spec.App)
		}
		reserved++
	}
	t.Logf("%d nodes x %d pods in %s: %d fresh, %d from reserve; %d reserved claims left for %d apps",
		nodes, podsPerNode, elapsed.Round(time.Millisecond), stats["fresh"], stats["hit"], reserved, len(deployments)+1)
}

func release(t testing.TB, ctx context.Context, c client.Client, alloc *ipalloc.Allocator, pod *corev1.Pod, id string, mu *sync.Mutex, holder map[string]string, addr string) {
	// Teardown order: the network goes, then CNI DEL, then the pod object.
	mu.Lock()
	if addr != "" && holder[addr] == pod.Name {
		delete(holder, addr)
	}
	mu.Unlock()
	if err := alloc.Release(ctx, id, "eth0"); err != nil {
		t.Errorf("DEL %s: %v", pod.Name, err)
	}
	if err := c.Delete(ctx, pod, client.GracePeriodSeconds(0)); err != nil && !errors.Is(err, context.Canceled) {
		if client.IgnoreNotFound(err) != nil {
			t.Errorf("delete pod %s: %v", pod.Name, err)
		}
	}
}

func mustCreate(t testing.TB, c client.Client, obj client.Object) {
	t.Helper()
	if err := c.Create(context.Background(), obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

// TestStore_readYourWrites: the store shows its own create, update and
// delete at once, before its informer has seen them.
func TestStore_readYourWrites(t *testing.T) {
	cfg, c := startAPI(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := newNodeStore(t, ctx, cfg, c)
	for i := range 20 {
		cl := &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p-10-0-0-%d", i)}, Spec: v1alpha1.IPClaimSpec{Pool: "p",
			Address: fmt.Sprintf("10.0.0.%d", i), State: v1alpha1.ClaimBound, ContainerID: fmt.Sprintf("c%d", i),
			Pod: v1alpha1.PodRef{Namespace: "ns", Name: "x", UID: "u"}, App: &v1alpha1.App{Kind: v1alpha1.AppGroup, Namespace: "ns", Name: "g"}}}
		if err := st.Create(ctx, cl); err != nil {
			t.Fatal(err)
		}
		if got, err := st.Claim(cl.Name); err != nil || got.ResourceVersion != cl.ResourceVersion {
			t.Fatalf("Claim right after Create: %v, %v", got, err)
		}
		if got, _ := st.ClaimsOfContainer(cl.Spec.ContainerID); len(got) != 1 {
			t.Fatalf("ClaimsOfContainer right after Create: %d claims", len(got))
		}
		up := cl.DeepCopy()
		up.Spec.State = v1alpha1.ClaimReserved
		if err := st.Update(ctx, up); err != nil {
			t.Fatal(err)
		}
		if got, _ := st.Claim(cl.Name); got == nil || got.Spec.State != v1alpha1.ClaimReserved {
			t.Fatalf("Claim right after Update: %+v", got)
		}
		if got, _ := st.ReservedClaims("p"); len(got) != 1 || got[0].Name != cl.Name {
			t.Fatalf("ReservedClaims right after Update: %d claims", len(got))
		}
		if i == 0 { // the update reset the claim's managedFields
			var stored v1alpha1.IPClaim
			if err := c.Get(ctx, client.ObjectKeyFromObject(cl), &stored); err != nil {
				t.Fatal(err)
			}
			if len(stored.ManagedFields) != 0 {
				t.Fatalf("managedFields after the store's update: %+v, want none", stored.ManagedFields)
			}
		}
		// Out of Reserved again: the cache may still list the claim under
		// its older state, the store must not.
		back := up.DeepCopy()
		back.Spec.State = v1alpha1.ClaimBound
		if err := st.Update(ctx, back); err != nil {
			t.Fatal(err)
		}
		if got, _ := st.ReservedClaims("p"); len(got) != 0 {
			t.Fatalf("ReservedClaims right after an Update out of Reserved: %d claims", len(got))
		}
		if err := st.Update(ctx, cl); !errors.Is(err, ipalloc.ErrConflict) {
			t.Fatalf("Update at a stale resourceVersion: %v, want ErrConflict", err)
		}
		if err := st.Delete(ctx, back); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Claim(cl.Name); !errors.Is(err, ipalloc.ErrNotFound) {
			t.Fatalf("Claim right after Delete: %v, want ErrNotFound", err)
		}
		if got, _ := st.ClaimsOfApp("p", v1alpha1.App{Kind: v1alpha1.AppGroup, Namespace: "ns", Name: "g"}); len(got) != 0 {
			t.Fatalf("ClaimsOfApp right after Delete: %d", len(got))
		}
		if got, _ := st.ReservedClaims("p"); len(got) != 0 {
			t.Fatalf("ReservedClaims right after Delete: %d", len(got))
		}
	}
}

// TestStore_ReservedClaims: the index lists a pool's Reserved claims as
// the cache sees them, written by others (not through the store).
func TestStore_ReservedClaims(t *testing.T) {
	cfg, c := startAPI(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := newNodeStore(t, ctx, cfg, c)
	until := metav1.NewTime(time.Now().Add(time.Hour))
	for i, x := range []struct {
		pool  string
		state v1alpha1.ClaimState
	}{{"p", v1alpha1.ClaimReserved}, {"p", v1alpha1.ClaimBound}, {"p", v1alpha1.ClaimReleasing}, {"q", v1alpha1.ClaimReserved}, {"p", v1alpha1.ClaimReserved}} {
		cl := &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-10-0-0-%d", x.pool, i)}, Spec: v1alpha1.IPClaimSpec{Pool: x.pool,
			Address: fmt.Sprintf("10.0.0.%d", i), State: x.state, Pod: v1alpha1.PodRef{Namespace: "ns", Name: "x", UID: "u"},
			App: &v1alpha1.App{Kind: v1alpha1.AppGroup, Namespace: "ns", Name: "g"}}}
		if x.state == v1alpha1.ClaimReserved {
			cl.Spec.ReservedUntil = &until
		}
		mustCreate(t, c, cl)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := st.ReservedClaims("p")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, cl := range got {
			names = append(names, cl.Name)
		}
		sort.Strings(names)
		if fmt.Sprint(names) == "[p-10-0-0-0 p-10-0-0-4]" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ReservedClaims(p) = %v, want [p-10-0-0-0 p-10-0-0-4]", names)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
