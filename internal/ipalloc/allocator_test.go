package ipalloc_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/ipalloc"
	"github.com/berth-io/berth/internal/ipalloc/ipalloctest"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func pool(name, cidr string, mod ...func(*v1alpha1.IPPool)) *v1alpha1.IPPool {
	p := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.IPPoolSpec{CIDR: cidr}}
	for _, m := range mod {
		m(p)
	}
	return p
}

// deleting marks a pool as being deleted (berth-controller's finalizer
// keeps it).
func deleting(p *v1alpha1.IPPool) {
	p.DeletionTimestamp = &metav1.Time{Time: t0}
	p.Finalizers = []string{v1alpha1.FinalizerPoolInUse}
}

type env struct {
	t     *testing.T
	store *ipalloctest.Store
	alloc *ipalloc.Allocator
	n     int
}

func newEnv(t *testing.T, pools ...*v1alpha1.IPPool) *env {
	t.Helper()
	s := ipalloctest.New()
	for _, p := range pools {
		s.AddPool(p)
	}
	s.AddReplicaSet(&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-5d8f",
		OwnerReferences: []metav1.OwnerReference{{Kind: "Deployment", Name: "web", Controller: ptr.To(true)}}}})
	a, err := ipalloc.New(ipalloc.Config{Store: s.View(false), Node: "node-a", Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, store: s, alloc: a}
}

// pod creates a pod owned by kind/owner ("" for a bare pod).
func (e *env) pod(name, kind, owner string, ann map[string]string) *corev1.Pod {
	e.n++
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(fmt.Sprintf("uid-%s-%d", name, e.n)), Annotations: ann,
		Labels: map[string]string{"app": "web"}}}
	if kind != "" {
		p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: owner, Controller: ptr.To(true)}}
	}
	e.store.SetPod(p)
	return p
}

func cid(p *corev1.Pod) string { return "c-" + string(p.UID) }

func (e *env) add(p *corev1.Pod) ([]ipalloc.Allocation, error) {
	return e.alloc.Allocate(context.Background(), ipalloc.Request{ContainerID: cid(p), IfName: "eth0", PodNamespace: p.Namespace, PodName: p.Name, PodUID: p.UID})
}

func (e *env) mustAdd(p *corev1.Pod) string {
	e.t.Helper()
	als, err := e.add(p)
	if err != nil {
		e.t.Fatalf("ADD %s: %v", p.Name, err)
	}
	var s []string
	for _, a := range als {
		s = append(s, a.Address.Addr().String())
	}
	return strings.Join(s, ",")
}

// terminate marks the pod terminating (deletion started, DEL not yet run).
func (e *env) terminate(p *corev1.Pod) {
	p.DeletionTimestamp = &metav1.Time{Time: t0}
	e.store.SetPod(p)
}

// del runs CNI DEL and removes the pod object.
func (e *env) del(p *corev1.Pod) {
	e.t.Helper()
	if err := e.alloc.Release(context.Background(), cid(p), "eth0"); err != nil {
		e.t.Fatalf("DEL %s: %v", p.Name, err)
	}
	e.store.RemovePod(p.Namespace, p.Name)
}

func (e *env) states() map[string]v1alpha1.ClaimState {
	out := map[string]v1alpha1.ClaimState{}
	for _, c := range e.store.Claims() {
		out[c.Spec.Address] = c.Spec.State
	}
	return out
}

func TestAllocator_Allocate_retention(t *testing.T) {
	t.Run("deployment pod replaced gets the same address", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		a := e.pod("web-5d8f-aaaaa", "ReplicaSet", "web-5d8f", nil)
		ip := e.mustAdd(a)
		e.terminate(a)
		e.del(a)
		if got := e.states()[ip]; got != v1alpha1.ClaimReserved {
			t.Fatalf("after DEL claim of %s is %q, want Reserved", ip, got)
		}
		b := e.pod("web-5d8f-bbbbb", "ReplicaSet", "web-5d8f", nil)
		if got := e.mustAdd(b); got != ip {
			t.Fatalf("replacement got %s, want %s", got, ip)
		}
	})
	t.Run("replacement waits for the terminating pod's DEL", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		a := e.pod("web-5d8f-aaaaa", "ReplicaSet", "web-5d8f", nil)
		ip := e.mustAdd(a)
		e.terminate(a)
		b := e.pod("web-5d8f-bbbbb", "ReplicaSet", "web-5d8f", nil)
		_, err := e.add(b)
		want := fmt.Sprintf("pod ns/web-5d8f-bbbbb, pool p: address %s of the pod's app is still held by pod ns/web-5d8f-aaaaa (uid %s), which is terminating; retrying until its teardown ends", ip, a.UID)
		if err == nil || err.Error() != want || !errors.Is(err, ipalloc.ErrHeld) || !ipalloc.Retryable(err) {
			t.Fatalf("ADD while held: err = %v, want %q (retryable)", err, want)
		}
		// The pod object going away is not enough: DEL has not run.
		e.store.RemovePod(a.Namespace, a.Name)
		if _, err := e.add(b); !errors.Is(err, ipalloc.ErrHeld) || !strings.Contains(err.Error(), "CNI DEL pending") {
			t.Fatalf("ADD after pod object gone, before DEL: err = %v, want ErrHeld naming the pending DEL", err)
		}
		e.del(a)
		if got := e.mustAdd(b); got != ip {
			t.Fatalf("after DEL got %s, want %s", got, ip)
		}
	})
	t.Run("three pods deleted at once get the same three back", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		var old []*corev1.Pod
		want := map[string]bool{}
		for i := range 3 {
			p := e.pod(fmt.Sprintf("web-5d8f-%d", i), "ReplicaSet", "web-5d8f", nil)
			want[e.mustAdd(p)] = true
			old = append(old, p)
		}
		for _, p := range old {
			e.terminate(p)
		}
		var repl []*corev1.Pod
		for i := range 3 {
			p := e.pod(fmt.Sprintf("web-5d8f-new%d", i), "ReplicaSet", "web-5d8f", nil)
			if _, err := e.add(p); !errors.Is(err, ipalloc.ErrHeld) {
				t.Fatalf("ADD %s before any DEL: err = %v, want ErrHeld", p.Name, err)
			}
			repl = append(repl, p)
		}
		for _, p := range old {
			e.del(p)
		}
		got := map[string]bool{}
		for _, p := range repl {
			got[e.mustAdd(p)] = true
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("replacements got %v, want %v", got, want)
		}
	})
	t.Run("scale 3 to 1 to 3 gives back the same three", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		want := map[string]bool{}
		var pods []*corev1.Pod
		for i := range 3 {
			p := e.pod(fmt.Sprintf("web-5d8f-%d", i), "ReplicaSet", "web-5d8f", nil)
			want[e.mustAdd(p)] = true
			pods = append(pods, p)
		}
		got := map[string]bool{}
		for _, p := range pods[1:] {
			e.terminate(p)
			e.del(p)
		}
		for i := range 2 {
			p := e.pod(fmt.Sprintf("web-5d8f-up%d", i), "ReplicaSet", "web-5d8f", nil)
			got[e.mustAdd(p)] = true
		}
		got[e.mustAdd(pods[0])] = true // idempotent: the survivor keeps its own
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("after 3 -> 1 -> 3: %v, want %v", got, want)
		}
	})
	t.Run("surge beyond the retained set takes a fresh address", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		a := e.pod("web-5d8f-aaaaa", "ReplicaSet", "web-5d8f", nil)
		ipA := e.mustAdd(a)
		b := e.pod("web-5d8f-bbbbb", "ReplicaSet", "web-5d8f", nil)
		if ipB := e.mustAdd(b); ipB == ipA {
			t.Fatalf("second live pod got the first pod's address %s", ipA)
		}
	})
	t.Run("statefulset ordinal keeps its address", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		w0 := e.pod("db-0", "StatefulSet", "db", nil)
		w1 := e.pod("db-1", "StatefulSet", "db", nil)
		ip0, ip1 := e.mustAdd(w0), e.mustAdd(w1)
		e.terminate(w0)
		e.del(w0)
		e.terminate(w1)
		e.del(w1)
		// db-1 comes back first: it must not take db-0's address.
		if got := e.mustAdd(e.pod("db-1", "StatefulSet", "db", nil)); got != ip1 {
			t.Fatalf("db-1 got %s, want %s", got, ip1)
		}
		if got := e.mustAdd(e.pod("db-0", "StatefulSet", "db", nil)); got != ip0 {
			t.Fatalf("db-0 got %s, want %s", got, ip0)
		}
		// A new ordinal gets a fresh address.
		if got := e.mustAdd(e.pod("db-2", "StatefulSet", "db", nil)); got == ip0 || got == ip1 {
			t.Fatalf("db-2 got %s, an address of another ordinal", got)
		}
	})
	t.Run("statefulset pod recreated waits for the old pod's DEL", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		old := e.pod("db-0", "StatefulSet", "db", nil)
		ip := e.mustAdd(old)
		e.terminate(old)
		e.store.RemovePod("ns", "db-0")
		neu := e.pod("db-0", "StatefulSet", "db", nil)
		if _, err := e.add(neu); !errors.Is(err, ipalloc.ErrHeld) || !strings.Contains(err.Error(), ip) {
			t.Fatalf("ADD of new db-0 before old DEL: err = %v, want ErrHeld naming %s", err, ip)
		}
		if err := e.alloc.Release(context.Background(), cid(old), "eth0"); err != nil {
			t.Fatal(err)
		}
		if got := e.mustAdd(neu); got != ip {
			t.Fatalf("new db-0 got %s, want %s", got, ip)
		}
	})
	t.Run("ip-group shares a reserve across workloads", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		a := e.pod("a-0", "StatefulSet", "a", map[string]string{v1alpha1.AnnotationGroup: "g"})
		ip := e.mustAdd(a)
		e.terminate(a)
		e.del(a)
		b := e.pod("b-x", "ReplicaSet", "b-1", map[string]string{v1alpha1.AnnotationGroup: "g"})
		if got := e.mustAdd(b); got != ip {
			t.Fatalf("group member got %s, want %s", got, ip)
		}
	})
}

func TestAllocator_Allocate_notRetained(t *testing.T) {
	for _, tc := range []struct {
		name       string
		kind       string
		ann        map[string]string
		poolRetain bool
	}{
		{name: "opted out", kind: "ReplicaSet", ann: map[string]string{v1alpha1.AnnotationRetain: "false"}, poolRetain: true},
		{name: "job pod", kind: "Job", poolRetain: true},
		{name: "daemonset pod", kind: "DaemonSet", poolRetain: true},
		{name: "bare pod", poolRetain: true},
		{name: "pool without retention", kind: "ReplicaSet", poolRetain: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, pool("p", "10.0.0.0/24", func(p *v1alpha1.IPPool) { p.Spec.Retain = ptr.To(tc.poolRetain) }))
			a := e.pod("web-5d8f-aaaaa", tc.kind, "web-5d8f", tc.ann)
			als, err := e.add(a)
			if err != nil {
				t.Fatal(err)
			}
			if als[0].Retained {
				t.Fatalf("allocation retained, want not")
			}
			e.terminate(a)
			// Not retained: a new pod does not wait for it, nor get it.
			b := e.pod("web-5d8f-bbbbb", tc.kind, "web-5d8f", tc.ann)
			if got := e.mustAdd(b); got == als[0].Address.Addr().String() {
				t.Fatalf("new pod got the terminating pod's address %s", got)
			}
			e.del(a)
			if _, ok := e.states()[als[0].Address.Addr().String()]; ok {
				t.Fatalf("claim of %s left after DEL, want it deleted", als[0].Address.Addr())
			}
		})
	}
}

func TestAllocator_Allocate_errors(t *testing.T) {
	full := pool("tiny", "10.9.0.0/30") // two addresses
	for _, tc := range []struct {
		name  string
		pools []*v1alpha1.IPPool
		ann   map[string]string
		nsAnn map[string]string
		fill  int // pods to allocate first
		want  string
		kind  error
	}{
		{name: "unknown pool", pools: []*v1alpha1.IPPool{pool("p", "10.0.0.0/24")}, ann: map[string]string{v1alpha1.AnnotationPool: "nope"},
			want: `pod ns/x, pool nope: no IPPool "nope" (from the pod annotation berth.io/ippool)`, kind: ipalloc.ErrUnknownPool},
		{name: "unknown namespace default pool", pools: []*v1alpha1.IPPool{pool("p", "10.0.0.0/24")}, nsAnn: map[string]string{v1alpha1.AnnotationPool: "gone"},
			want: `pod ns/x, pool gone: no IPPool "gone" (from the namespace annotation berth.io/ippool)`, kind: ipalloc.ErrUnknownPool},
		{name: "exhausted", pools: []*v1alpha1.IPPool{full}, fill: 2,
			want: "pod ns/x, pool tiny: all 2 addresses are held by pods or reserved for the pod's own app: no other app's reservation is left to reclaim", kind: ipalloc.ErrExhausted},
		{name: "forbidden by namespace selector", pools: []*v1alpha1.IPPool{pool("prod", "10.0.0.0/24", func(p *v1alpha1.IPPool) {
			p.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}
		})}, ann: map[string]string{v1alpha1.AnnotationPool: "prod"},
			want: "pod ns/x, pool prod: the pool may not be used by this pod: namespace ns does not match its namespaceSelector env=prod", kind: ipalloc.ErrForbidden},
		{name: "forbidden by pod selector", pools: []*v1alpha1.IPPool{pool("db", "10.0.0.0/24", func(p *v1alpha1.IPPool) {
			p.Spec.PodSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}
		})}, ann: map[string]string{v1alpha1.AnnotationPool: "db"},
			want: "pod ns/x, pool db: the pool may not be used by this pod: the pod's labels do not match its podSelector app=db", kind: ipalloc.ErrForbidden},
		{name: "pool being deleted", pools: []*v1alpha1.IPPool{pool("old", "10.0.0.0/24", deleting)}, ann: map[string]string{v1alpha1.AnnotationPool: "old"},
			want: "pod ns/x, pool old: the pool may not be used by this pod: it is being deleted (it goes once the pods holding its addresses have released them)", kind: ipalloc.ErrForbidden},
		{name: "no pool admits the pod", pools: []*v1alpha1.IPPool{pool("db", "10.0.0.0/24", func(p *v1alpha1.IPPool) {
			p.Spec.PodSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}
		})}, want: "pod ns/x: no IPPool admits the pod (of 1 pools) and no berth.io/ippool annotation names one", kind: ipalloc.ErrNoPool},
		{name: "malformed retain", pools: []*v1alpha1.IPPool{pool("p", "10.0.0.0/24")}, ann: map[string]string{v1alpha1.AnnotationRetain: "no"},
			want: `pod ns/x: malformed annotation: berth.io/ip-retain: "no": want "true" or "false"`, kind: ipalloc.ErrBadAnnotation},
		{name: "malformed pool list", pools: []*v1alpha1.IPPool{pool("p", "10.0.0.0/24")}, ann: map[string]string{v1alpha1.AnnotationPool: "p,,q"},
			kind: ipalloc.ErrBadAnnotation, want: `pod ns/x: pod annotation berth.io/ippool: "p,,q": pool name "": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`},
		{name: "two pools of one family", pools: []*v1alpha1.IPPool{pool("a", "10.0.0.0/24"), pool("b", "10.1.0.0/24")}, ann: map[string]string{v1alpha1.AnnotationPool: "a,b"},
			want: "pod ns/x, pool b: pod annotation berth.io/ippool names two pools of one IP family", kind: ipalloc.ErrBadAnnotation},
		{name: "pool overlapping an older pool", pools: []*v1alpha1.IPPool{pool("a", "10.0.0.0/24"), pool("b", "10.0.0.128/25")}, ann: map[string]string{v1alpha1.AnnotationPool: "b"},
			kind: ipalloc.ErrBadPool, want: "pod ns/x, pool b: its addresses overlap those of the older pool a (10.0.0.129 among them), which keeps them: " +
				"the same address could go to two pods; make the pools disjoint (cidr, includeRanges, excludeRanges)"},
		{name: "pool with a bad reservationTTL", pools: []*v1alpha1.IPPool{pool("p", "10.0.0.0/24", func(p *v1alpha1.IPPool) { p.Spec.ReservationTTL = "7d" })},
			kind: ipalloc.ErrBadPool, want: `pod ns/x, pool p: reservationTTL "7d": time: unknown unit "d" in duration "7d" (want a positive duration such as 24h, 90m or 1h30m; 7 days is 168h)`},
		{name: "malformed group", pools: []*v1alpha1.IPPool{pool("p", "10.0.0.0/24")}, ann: map[string]string{v1alpha1.AnnotationGroup: "Bad_Group"},
			kind: ipalloc.ErrBadAnnotation, want: `pod ns/x: malformed annotation: berth.io/ip-group: "Bad_Group": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.pools...)
			for i := range tc.fill {
				e.mustAdd(e.pod(fmt.Sprintf("f%d", i), "", "", nil))
			}
			if tc.nsAnn != nil {
				e.store.AddNamespace(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns", Annotations: tc.nsAnn}})
			}
			before := len(e.store.Claims())
			_, err := e.add(e.pod("x", "ReplicaSet", "web-5d8f", tc.ann))
			if err == nil || err.Error() != tc.want || !errors.Is(err, tc.kind) {
				t.Fatalf("err = %v\nwant %s (%v)", err, tc.want, tc.kind)
			}
			if ipalloc.Retryable(err) {
				t.Errorf("error is retryable, want permanent")
			}
			if after := len(e.store.Claims()); after != before {
				t.Errorf("claims %d -> %d: a failed ADD leaked", before, after)
			}
		})
	}
}

func TestAllocator_Allocate_pools(t *testing.T) {
	t.Run("namespace default pool", func(t *testing.T) {
		e := newEnv(t, pool("a", "10.0.0.0/24"), pool("b", "10.1.0.0/24"))
		e.store.AddNamespace(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns", Annotations: map[string]string{v1alpha1.AnnotationPool: "b"}}})
		if got := e.mustAdd(e.pod("x", "", "", nil)); !strings.HasPrefix(got, "10.1.0.") {
			t.Fatalf("got %s, want an address of pool b", got)
		}
	})
	t.Run("dual stack takes one of each", func(t *testing.T) {
		e := newEnv(t, pool("v4", "10.0.0.0/24"), pool("v6", "fd00::/120"))
		als, err := e.add(e.pod("x", "", "", nil))
		if err != nil || len(als) != 2 || !als[0].Address.Addr().Is4() || !als[1].Address.Addr().Is6() {
			t.Fatalf("got %+v, %v; want an IPv4 and an IPv6 address", als, err)
		}
		if als[1].Address.Bits() != 120 {
			t.Errorf("IPv6 prefix length %d, want 120", als[1].Address.Bits())
		}
	})
	t.Run("dual stack failure rolls back", func(t *testing.T) {
		e := newEnv(t, pool("v4", "10.0.0.0/24"), pool("v6", "fd00::/127"))
		e.mustAdd(e.pod("f", "", "", map[string]string{v1alpha1.AnnotationPool: "v6"})) // /127: 2 addresses
		e.mustAdd(e.pod("g", "", "", map[string]string{v1alpha1.AnnotationPool: "v6"}))
		if _, err := e.add(e.pod("x", "", "", nil)); !errors.Is(err, ipalloc.ErrExhausted) {
			t.Fatalf("err = %v, want exhausted", err)
		}
		for _, c := range e.store.Claims() {
			if c.Spec.Pod.Name == "x" {
				t.Fatalf("claim %s left after failed dual-stack ADD", c.Name)
			}
		}
	})
	t.Run("gateway and excluded addresses are never handed out", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/29", func(p *v1alpha1.IPPool) {
			p.Spec.Gateway = "10.0.0.1"
			p.Spec.ExcludeRanges = []string{"10.0.0.2-10.0.0.4"}
		}))
		got := map[string]bool{}
		for i := range 2 {
			got[e.mustAdd(e.pod(fmt.Sprintf("p%d", i), "", "", nil))] = true
		}
		if fmt.Sprint(got) != "map[10.0.0.5:true 10.0.0.6:true]" {
			t.Fatalf("handed out %v, want 10.0.0.5 and 10.0.0.6", got)
		}
		if _, err := e.add(e.pod("p9", "", "", nil)); !errors.Is(err, ipalloc.ErrExhausted) {
			t.Fatalf("third ADD: err = %v, want exhausted", err)
		}
	})
	t.Run("repeated ADD is idempotent, repeated DEL too", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		p := e.pod("web-5d8f-aaaaa", "ReplicaSet", "web-5d8f", nil)
		a, b := e.mustAdd(p), e.mustAdd(p)
		if a != b || len(e.store.Claims()) != 1 {
			t.Fatalf("second ADD got %s (first %s), %d claims", b, a, len(e.store.Claims()))
		}
		e.del(p)
		e.del(p)
		if len(e.store.Claims()) != 1 || e.states()[a] != v1alpha1.ClaimReserved {
			t.Fatalf("after two DELs: %v", e.states())
		}
	})
	t.Run("DEL of an older sandbox does not release the new one", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		p := e.pod("x", "", "", nil)
		ip := e.mustAdd(p)
		if _, err := e.alloc.Allocate(context.Background(), ipalloc.Request{ContainerID: "sandbox-2", IfName: "eth0", PodNamespace: "ns", PodName: "x"}); err != nil {
			t.Fatal(err)
		}
		if err := e.alloc.Release(context.Background(), cid(p), "eth0"); err != nil {
			t.Fatal(err)
		}
		if e.states()[ip] != v1alpha1.ClaimBound {
			t.Fatalf("claim %s: %v, want still Bound to sandbox-2", ip, e.states())
		}
	})
	t.Run("a pool being deleted is not chosen", func(t *testing.T) {
		e := newEnv(t, pool("a-old", "10.0.0.0/24", deleting), pool("b", "10.1.0.0/24"))
		if got := e.mustAdd(e.pod("x", "", "", nil)); !strings.HasPrefix(got, "10.1.0.") {
			t.Fatalf("got %s, want an address of pool b (a-old is being deleted)", got)
		}
	})
	t.Run("DEL in a pool being deleted frees the address instead of reserving it", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		p := e.pod("web-5d8f-a", "ReplicaSet", "web-5d8f", nil)
		e.mustAdd(p)
		e.store.AddPool(pool("p", "10.0.0.0/24", deleting))
		e.del(p)
		if n := len(e.store.Claims()); n != 0 {
			t.Fatalf("%d claims left: %v; the pool's deletion waits for none of them", n, e.states())
		}
	})
	t.Run("an address claimed in another pool is not handed out", func(t *testing.T) {
		// Pool "old" (gone, or narrowed to exclude it) had given 10.0.0.1
		// to a pod that still runs; "new" covers the same addresses.
		e := newEnv(t, pool("new", "10.0.0.0/30"))
		e.store.PutClaim(&v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.ClaimName("old", netip.MustParseAddr("10.0.0.1"))},
			Spec: v1alpha1.IPClaimSpec{Pool: "old", Address: "10.0.0.1", State: v1alpha1.ClaimBound,
				Pod: v1alpha1.PodRef{Namespace: "ns", Name: "holder", UID: "uid-holder"}}})
		for i := range 4 { // from several start points
			p := e.pod(fmt.Sprintf("x%d", i), "", "", nil)
			if got := e.mustAdd(p); got != "10.0.0.2" {
				t.Fatalf("ADD %d got %s, want 10.0.0.2 (10.0.0.1 is pod ns/holder's in pool old)", i, got)
			}
			e.del(p)
		}
		e.mustAdd(e.pod("y", "", "", nil))
		if _, err := e.add(e.pod("z", "", "", nil)); !errors.Is(err, ipalloc.ErrExhausted) {
			t.Fatalf("err = %v, want exhausted: 10.0.0.1 is still held", err)
		}
	})
	t.Run("reservation records the TTL", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24", func(p *v1alpha1.IPPool) { p.Spec.ReservationTTL = "1h" }))
		p := e.pod("web-5d8f-a", "ReplicaSet", "web-5d8f", nil)
		e.mustAdd(p)
		e.del(p)
		c := e.store.Claims()[0]
		if c.Spec.ReservedUntil == nil || !c.Spec.ReservedUntil.Time.Equal(t0.Add(time.Hour)) || c.Spec.App.Kind != v1alpha1.AppDeployment || c.Spec.App.Name != "web" {
			t.Fatalf("reserved claim: %+v", c.Spec)
		}
	})
}

func TestParsePool(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec v1alpha1.IPPoolSpec
		size uint64
		all  string // every address, when small
		err  string
	}{
		{name: "ipv4 /29 without network and broadcast", spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/29"}, size: 6, all: "10.0.0.1 10.0.0.2 10.0.0.3 10.0.0.4 10.0.0.5 10.0.0.6"},
		{name: "ipv4 /31 both", spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/31"}, size: 2, all: "10.0.0.0 10.0.0.1"},
		{name: "include and exclude", spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Gateway: "10.0.0.11",
			IncludeRanges: []string{"10.0.0.10-10.0.0.14", "10.0.0.13/32", "10.0.0.20"}, ExcludeRanges: []string{"10.0.0.12"}}, size: 4, all: "10.0.0.10 10.0.0.13 10.0.0.14 10.0.0.20"},
		{name: "ipv6 keeps the last address", spec: v1alpha1.IPPoolSpec{CIDR: "fd00::/126"}, size: 3, all: "fd00::1 fd00::2 fd00::3"},
		{name: "ipv6 /64 is large", spec: v1alpha1.IPPoolSpec{CIDR: "fd00::/64"}, size: 1 << 62},
		{name: "bad cidr", spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/33"}, err: `cidr "10.0.0.0/33": netip.ParsePrefix("10.0.0.0/33"): prefix length out of range`},
		{name: "gateway outside", spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Gateway: "10.0.1.1"}, err: "gateway 10.0.1.1 is outside cidr 10.0.0.0/24"},
		{name: "range outside", spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", IncludeRanges: []string{"10.0.1.0/28"}}, err: `includeRanges: "10.0.1.0/28" is not inside cidr 10.0.0.0/24`},
		{name: "range backwards", spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ExcludeRanges: []string{"10.0.0.9-10.0.0.1"}}, err: `excludeRanges: "10.0.0.9-10.0.0.1": the range ends before it starts`},
		{name: "nothing left", spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/30", ExcludeRanges: []string{"10.0.0.0/30"}}, err: "no address left to hand out after ranges and gateway"},
		{name: "route of the other family", spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Routes: []v1alpha1.Route{{Destination: "::/0"}}}, err: "route ::/0: not of the pool's IP family"},
		// Stored before the API server checked reservationTTL: the pool is
		// invalid, nothing else fails.
		{name: "reservationTTL in days", spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReservationTTL: "1d"},
			err: `reservationTTL "1d": time: unknown unit "d" in duration "1d" (want a positive duration such as 24h, 90m or 1h30m; 7 days is 168h)`},
		{name: "reservationTTL zero", spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReservationTTL: "0s"}, err: `reservationTTL "0s": want a positive duration`},
		{name: "reservationTTL negative", spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReservationTTL: "-1h"}, err: `reservationTTL "-1h": want a positive duration`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ipalloc.ParsePool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: tc.spec})
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("err = %v, want %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Size() != tc.size {
				t.Fatalf("size %d, want %d", p.Size(), tc.size)
			}
			if tc.all != "" {
				var got []string
				for i := range p.Size() {
					a := p.At(i)
					if !p.Contains(a) {
						t.Errorf("At(%d) = %s not contained", i, a)
					}
					got = append(got, a.String())
				}
				sort.Slice(got, func(i, j int) bool { return netip.MustParseAddr(got[i]).Less(netip.MustParseAddr(got[j])) })
				if s := strings.Join(got, " "); s != tc.all {
					t.Fatalf("addresses %s, want %s", s, tc.all)
				}
			}
		})
	}
}

func TestAllocator_ReleaseEarly(t *testing.T) {
	e := newEnv(t, pool("p", "10.0.0.0/24"))
	early := map[string]string{v1alpha1.AnnotationRelease: "early"}
	a := e.pod("web-5d8f-aaaaa", "ReplicaSet", "web-5d8f", early)
	ip := e.mustAdd(a)
	e.terminate(a)
	b := e.pod("web-5d8f-bbbbb", "ReplicaSet", "web-5d8f", early)
	var unplugged []string
	fail := errors.New("netns busy")
	// The unplug fails: the claim stays Releasing, still held.
	err := e.alloc.ReleaseEarly(context.Background(), a.UID, func(c *v1alpha1.IPClaim) error {
		if c.Spec.State != v1alpha1.ClaimReleasing {
			t.Errorf("unplug called with state %s, want Releasing", c.Spec.State)
		}
		return fail
	})
	if !errors.Is(err, fail) || e.states()[ip] != v1alpha1.ClaimReleasing {
		t.Fatalf("failed unplug: err %v, states %v", err, e.states())
	}
	if _, err := e.add(b); !errors.Is(err, ipalloc.ErrHeld) {
		t.Fatalf("ADD while Releasing: %v, want ErrHeld", err)
	}
	// The unplug succeeds: reserved, and the replacement gets it before
	// the old pod's DEL.
	if err := e.alloc.ReleaseEarly(context.Background(), a.UID, func(c *v1alpha1.IPClaim) error {
		unplugged = append(unplugged, c.Spec.Address)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(unplugged) != "["+ip+"]" || e.states()[ip] != v1alpha1.ClaimReserved {
		t.Fatalf("unplugged %v, states %v", unplugged, e.states())
	}
	if got := e.mustAdd(b); got != ip {
		t.Fatalf("replacement got %s, want %s", got, ip)
	}
	// The old pod's DEL comes later and must not touch the new holder.
	e.del(a)
	if e.states()[ip] != v1alpha1.ClaimBound {
		t.Fatalf("old DEL released the new pod's claim: %v", e.states())
	}
}

// claimOf returns a claim of addr in pool in the given state, for app (nil:
// not retained), reserved until t0+until when Reserved.
func claimOf(pool, addr string, state v1alpha1.ClaimState, app *v1alpha1.App, until time.Duration) *v1alpha1.IPClaim {
	c := &v1alpha1.IPClaim{
		ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.ClaimName(pool, netip.MustParseAddr(addr)), Labels: map[string]string{v1alpha1.LabelPool: pool}},
		Spec: v1alpha1.IPClaimSpec{Pool: pool, Address: addr, App: app, State: state, Node: "node-b",
			Pod: v1alpha1.PodRef{Namespace: "ns", Name: "old-" + addr, UID: types.UID("uid-old-" + addr)}},
	}
	if state == v1alpha1.ClaimReserved {
		c.Spec.ReservedUntil = &metav1.Time{Time: t0.Add(until)}
	} else {
		c.Spec.ContainerID = "c-old-" + addr
	}
	return c
}

func deployment(name string) *v1alpha1.App {
	return &v1alpha1.App{Kind: v1alpha1.AppDeployment, Namespace: "ns", Name: name}
}

func TestAllocator_Allocate_reclaim(t *testing.T) {
	db0 := &v1alpha1.App{Kind: v1alpha1.AppStatefulSet, Namespace: "ns", Name: "db", Ordinal: ptr.To[int32](0)}
	noReclaim := func(p *v1alpha1.IPPool) { p.Spec.ReclaimReservations = ptr.To(false) }
	for _, tc := range []struct {
		name   string
		pool   *v1alpha1.IPPool
		claims []*v1alpha1.IPClaim
		pod    [3]string // name, owner kind, owner
		ann    map[string]string
		want   string // the address the pod gets
		prev   string // the app it was reserved for
		app    *v1alpha1.App
		err    string
	}{
		{name: "takes the reservation of another app that ends soonest, the lowest address on a tie",
			pool: pool("tiny", "10.9.0.0/29"), claims: []*v1alpha1.IPClaim{
				claimOf("tiny", "10.9.0.1", v1alpha1.ClaimReserved, deployment("a"), 5*time.Hour),
				claimOf("tiny", "10.9.0.2", v1alpha1.ClaimBound, deployment("b"), 0),
				claimOf("tiny", "10.9.0.3", v1alpha1.ClaimReserved, deployment("d"), time.Hour),
				claimOf("tiny", "10.9.0.4", v1alpha1.ClaimReserved, deployment("c"), time.Hour),
				claimOf("tiny", "10.9.0.5", v1alpha1.ClaimReleasing, deployment("e"), 0),
				claimOf("tiny", "10.9.0.6", v1alpha1.ClaimReserved, deployment("f"), 2*time.Hour),
			}, pod: [3]string{"web-5d8f-aaaaa", "ReplicaSet", "web-5d8f"}, want: "10.9.0.3", prev: "d", app: deployment("web")},
		{name: "a pod whose address is not retained takes it without keeping it for an app",
			pool: pool("tiny", "10.9.0.0/30"), claims: []*v1alpha1.IPClaim{
				claimOf("tiny", "10.9.0.1", v1alpha1.ClaimBound, deployment("a"), 0),
				claimOf("tiny", "10.9.0.2", v1alpha1.ClaimReserved, deployment("b"), time.Hour),
			}, pod: [3]string{"x", "", ""}, want: "10.9.0.2", prev: "b"},
		{name: "an opted-out pod never takes a reservation of the app it would have had",
			pool: pool("tiny", "10.9.0.0/30"), claims: []*v1alpha1.IPClaim{
				claimOf("tiny", "10.9.0.1", v1alpha1.ClaimReserved, deployment("web"), time.Hour),
				claimOf("tiny", "10.9.0.2", v1alpha1.ClaimReserved, deployment("a"), 2*time.Hour),
			}, pod: [3]string{"web-5d8f-bbbbb", "ReplicaSet", "web-5d8f"}, ann: map[string]string{v1alpha1.AnnotationRetain: "false"},
			want: "10.9.0.2", prev: "a"},
		{name: "never a Bound or Releasing address",
			pool: pool("tiny", "10.9.0.0/30"), claims: []*v1alpha1.IPClaim{
				claimOf("tiny", "10.9.0.1", v1alpha1.ClaimBound, deployment("a"), 0),
				claimOf("tiny", "10.9.0.2", v1alpha1.ClaimReleasing, deployment("b"), 0),
			}, pod: [3]string{"x", "", ""},
			err: "pod ns/x, pool tiny: all 2 addresses are held by pods or reserved for the pod's own app: no other app's reservation is left to reclaim"},
		{name: "never a reservation of the pod's own app",
			pool: pool("tiny", "10.9.0.0/30"), claims: []*v1alpha1.IPClaim{
				claimOf("tiny", "10.9.0.1", v1alpha1.ClaimReserved, db0, time.Hour),
				claimOf("tiny", "10.9.0.2", v1alpha1.ClaimBound, deployment("a"), 0),
			}, pod: [3]string{"db-1", "StatefulSet", "db"},
			err: "pod ns/db-1, pool tiny: all 2 addresses are held by pods or reserved for the pod's own app: no other app's reservation is left to reclaim"},
		{name: "reclaimReservations false fails as exhausted",
			pool: pool("tiny", "10.9.0.0/30", noReclaim), claims: []*v1alpha1.IPClaim{
				claimOf("tiny", "10.9.0.1", v1alpha1.ClaimReserved, deployment("a"), time.Hour),
				claimOf("tiny", "10.9.0.2", v1alpha1.ClaimReserved, deployment("b"), time.Hour),
			}, pod: [3]string{"x", "", ""},
			err: "pod ns/x, pool tiny: all 2 addresses are bound or reserved for apps (reservations end after 24h0m0s; reclaimReservations is off)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.pool)
			for _, c := range tc.claims {
				e.store.PutClaim(c)
			}
			writes := e.store.Writes
			p := e.pod(tc.pod[0], tc.pod[1], tc.pod[2], tc.ann)
			als, err := e.add(p)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err || !errors.Is(err, ipalloc.ErrExhausted) || ipalloc.Retryable(err) {
					t.Fatalf("err = %v\nwant %s (exhausted, permanent)", err, tc.err)
				}
				if n := e.store.Writes - writes; n != 0 {
					t.Errorf("a failed ADD wrote %d claims", n)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			al := als[0]
			if got := al.Address.Addr().String(); got != tc.want || !al.Reclaimed || al.Reused || al.PreviousApp == nil || al.PreviousApp.Name != tc.prev {
				t.Fatalf("got %s (reclaimed %v, reused %v, previous app %v), want %s reclaimed from app %s", got, al.Reclaimed, al.Reused, al.PreviousApp, tc.want, tc.prev)
			}
			var c *v1alpha1.IPClaim
			for _, x := range e.store.Claims() {
				if x.Spec.Address == tc.want {
					c = x
				}
			}
			if c.Spec.State != v1alpha1.ClaimBound || c.Spec.ReservedUntil != nil || c.Spec.Pod.UID != p.UID || c.Spec.ContainerID != cid(p) ||
				c.Spec.Node != "node-a" || c.Labels[v1alpha1.LabelPodUID] != string(p.UID) || fmt.Sprint(c.Spec.App) != fmt.Sprint(tc.app) {
				t.Fatalf("reclaimed claim: %+v, labels %v; want Bound to the pod for app %v", c.Spec, c.Labels, tc.app)
			}
			if al.Retained != (tc.app != nil) {
				t.Errorf("retained %v, want %v", al.Retained, tc.app != nil)
			}
			e.del(p)
			if state, ok := e.states()[tc.want]; tc.app == nil && ok || tc.app != nil && state != v1alpha1.ClaimReserved {
				t.Errorf("after DEL: claim of %s %q (exists %v), want reserved for the pod's app or deleted", tc.want, state, ok)
			}
		})
	}
}

// TestAllocator_Allocate_reclaimLostRace: the reservation that ends soonest
// was taken back by its app after this allocator's cache read it; the
// update at the stale resourceVersion fails, and the next candidate is
// taken.
func TestAllocator_Allocate_reclaimLostRace(t *testing.T) {
	e := newEnv(t, pool("tiny", "10.9.0.0/29"))
	for i, app := range []string{"a", "b", "c", "d", "e", "f"} {
		state := v1alpha1.ClaimBound
		if i < 2 {
			state = v1alpha1.ClaimReserved
		}
		e.store.PutClaim(claimOf("tiny", fmt.Sprintf("10.9.0.%d", i+1), state, deployment(app), time.Duration(i+1)*time.Hour))
	}
	view := e.store.View(true) // as of now
	alloc, err := ipalloc.New(ipalloc.Config{Store: view, Node: "node-a", Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	// App a's new pod takes 10.9.0.1 back on another node.
	back := claimOf("tiny", "10.9.0.1", v1alpha1.ClaimBound, deployment("a"), 0)
	e.store.PutClaim(back)

	p := e.pod("web-5d8f-aaaaa", "ReplicaSet", "web-5d8f", nil)
	writes := e.store.Writes
	als, err := alloc.Allocate(context.Background(), ipalloc.Request{ContainerID: cid(p), IfName: "eth0", PodNamespace: "ns", PodName: p.Name, PodUID: p.UID})
	if err != nil {
		t.Fatal(err)
	}
	if got := als[0].Address.Addr().String(); got != "10.9.0.2" || !als[0].Reclaimed || als[0].PreviousApp.Name != "b" {
		t.Fatalf("got %s (reclaimed %v, previous app %v), want 10.9.0.2 reclaimed from app b", got, als[0].Reclaimed, als[0].PreviousApp)
	}
	if s := e.states(); s["10.9.0.1"] != v1alpha1.ClaimBound || s["10.9.0.2"] != v1alpha1.ClaimBound {
		t.Fatalf("states %v", s)
	}
	for _, c := range e.store.Claims() {
		if c.Spec.Address == "10.9.0.1" && c.Spec.Pod.UID != back.Spec.Pod.UID {
			t.Fatalf("10.9.0.1 went to %s, want it left to app a's pod", c.Spec.Pod.Name)
		}
	}
	if n := e.store.Writes - writes; n != 1 {
		t.Errorf("%d claim writes, want 1 (the lost race writes nothing)", n)
	}
}

// TestAllocator_Allocate_ordinalFreedMeanwhile: a StatefulSet pod's
// reservation is freed (or reclaimed and released by another app) after
// the allocator's cache read it: ADD fails as retryable until the cache
// catches up, then takes a fresh address.
func TestAllocator_Allocate_ordinalFreedMeanwhile(t *testing.T) {
	e := newEnv(t, pool("p", "10.0.0.0/24"))
	db0 := &v1alpha1.App{Kind: v1alpha1.AppStatefulSet, Namespace: "ns", Name: "db", Ordinal: ptr.To[int32](0)}
	e.store.PutClaim(claimOf("p", "10.0.0.5", v1alpha1.ClaimReserved, db0, time.Hour))
	view := e.store.View(true)
	alloc, err := ipalloc.New(ipalloc.Config{Store: view, Node: "node-a", Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	live := e.store.View(false)
	c, err := live.Claim(v1alpha1.ClaimName("p", netip.MustParseAddr("10.0.0.5")))
	if err != nil {
		t.Fatal(err)
	}
	if err := live.Delete(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	p := e.pod("db-0", "StatefulSet", "db", nil)
	req := ipalloc.Request{ContainerID: cid(p), IfName: "eth0", PodNamespace: "ns", PodName: p.Name, PodUID: p.UID}
	if _, err := alloc.Allocate(context.Background(), req); !errors.Is(err, ipalloc.ErrTooManyRetries) || !ipalloc.Retryable(err) {
		t.Fatalf("ADD with a stale cache: err = %v, want retryable ErrTooManyRetries", err)
	}
	view.Sync()
	if _, err := alloc.Allocate(context.Background(), req); err != nil {
		t.Fatalf("ADD once the cache caught up: %v", err)
	}
}

// TestAllocator_Prepare: a pod's addresses allocated before its sandbox
// exists are what its ADD gets, without a write; BindContainer records the
// container once, and refuses a claim that is no longer the pod's.
func TestAllocator_Prepare(t *testing.T) {
	e := newEnv(t, pool("p", "10.1.0.0/28"))
	ctx := context.Background()
	p := e.pod("web-5d8f-a", "ReplicaSet", "web-5d8f", nil)
	req := ipalloc.Request{IfName: "eth0", PodNamespace: "ns", PodName: p.Name, PodUID: p.UID}

	if _, err := e.alloc.Prepare(ctx, ipalloc.Request{ContainerID: "c", IfName: "eth0", PodNamespace: "ns", PodName: p.Name}); err == nil {
		t.Fatal("Prepare with a container ID: no error")
	}
	prep, err := e.alloc.Prepare(ctx, req)
	if err != nil || len(prep) != 1 || prep[0].Prepared || prep[0].PodUID != p.UID || !prep[0].Retained {
		t.Fatalf("Prepare: %+v, %v", prep, err)
	}
	c := e.store.Claims()[0]
	if c.Spec.State != v1alpha1.ClaimBound || c.Spec.ContainerID != "" || c.Spec.Pod.UID != p.UID || c.Spec.Node != "node-a" || c.Spec.Interface != "eth0" {
		t.Fatalf("prepared claim: %+v", c.Spec)
	}
	// Preparing again changes nothing.
	if again, err := e.alloc.Prepare(ctx, req); err != nil || again[0].Claim != prep[0].Claim || len(e.store.Claims()) != 1 {
		t.Fatalf("Prepare again: %+v, %v; %d claims", again, err, len(e.store.Claims()))
	}
	rv := e.store.Claims()[0].ResourceVersion

	als, err := e.add(p)
	if err != nil || len(als) != 1 || !als[0].Prepared || als[0].Claim != prep[0].Claim || als[0].Address != prep[0].Address {
		t.Fatalf("ADD after Prepare: %+v, %v; want the prepared %s", als, err, prep[0].Address)
	}
	if got := e.store.Claims()[0]; got.ResourceVersion != rv || got.Spec.ContainerID != "" {
		t.Fatalf("ADD of a prepared claim wrote it: rv %s -> %s, container %q", rv, got.ResourceVersion, got.Spec.ContainerID)
	}
	// Until the container is recorded, DEL of it finds nothing (the server
	// waits for BindContainer first).
	for range 2 {
		if err := e.alloc.BindContainer(ctx, als[0].Claim, p.UID, cid(p), "berth"); err != nil {
			t.Fatalf("BindContainer: %v", err)
		}
	}
	if got := e.store.Claims()[0]; got.Spec.ContainerID != cid(p) || got.Spec.Network != "berth" {
		t.Fatalf("after BindContainer: container %q, network %q; want %s, berth", got.Spec.ContainerID, got.Spec.Network, cid(p))
	}
	if again, err := e.add(p); err != nil || again[0].Prepared {
		t.Fatalf("repeated ADD once bound: %+v, %v; want not prepared", again, err)
	}
	for _, tc := range []struct {
		name      string
		uid       types.UID
		container string
	}{
		{"another container", p.UID, "other"},
		{"another pod", "uid-other", cid(p)},
	} {
		if err := e.alloc.BindContainer(ctx, als[0].Claim, tc.uid, tc.container, "berth"); !errors.Is(err, ipalloc.ErrNotPrepared) {
			t.Errorf("BindContainer, %s: %v, want ErrNotPrepared", tc.name, err)
		}
	}
	// ReleasePrepared leaves a claim that records its container alone...
	if err := e.alloc.ReleasePrepared(ctx, als[0].Claim, p.UID); err != nil || e.states()[als[0].Address.Addr().String()] != v1alpha1.ClaimBound {
		t.Fatalf("ReleasePrepared of a bound claim: %v, states %v", err, e.states())
	}
	e.del(p)
	if err := e.alloc.BindContainer(ctx, als[0].Claim, p.UID, cid(p), "berth"); !errors.Is(err, ipalloc.ErrNotPrepared) {
		t.Errorf("BindContainer of a Reserved claim: %v, want ErrNotPrepared", err)
	}

	// ... and releases one no ADD took: to the app's reserve.
	q := e.pod("web-5d8f-b", "ReplicaSet", "web-5d8f", nil)
	prepQ, err := e.alloc.Prepare(ctx, ipalloc.Request{IfName: "eth0", PodNamespace: "ns", PodName: q.Name, PodUID: q.UID})
	if err != nil || !prepQ[0].Reused || prepQ[0].Address != als[0].Address {
		t.Fatalf("Prepare of the app's next pod: %+v, %v; want its reserved %s", prepQ, err, als[0].Address)
	}
	if err := e.alloc.ReleasePrepared(ctx, prepQ[0].Claim, p.UID); err != nil || e.states()[als[0].Address.Addr().String()] != v1alpha1.ClaimBound {
		t.Fatalf("ReleasePrepared for another pod: %v, states %v; want it left Bound", err, e.states())
	}
	if err := e.alloc.ReleasePrepared(ctx, prepQ[0].Claim, q.UID); err != nil || e.states()[als[0].Address.Addr().String()] != v1alpha1.ClaimReserved {
		t.Fatalf("ReleasePrepared: %v, states %v; want Reserved again", err, e.states())
	}
	if err := e.alloc.BindContainer(ctx, "p-10-1-0-99", q.UID, cid(q), "berth"); !errors.Is(err, ipalloc.ErrNotPrepared) {
		t.Errorf("BindContainer of a missing claim: %v, want ErrNotPrepared", err)
	}
}
