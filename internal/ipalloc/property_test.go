package ipalloc_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/ipalloc"
	"github.com/berth-io/berth/internal/ipalloc/ipalloctest"
)

// model is the cluster as the property test drives it: pods, which node
// each runs on, and which address each pod's network holds (from a
// successful ADD until its DEL starts).
type model struct {
	mu       sync.Mutex
	t        *testing.T
	store    *ipalloctest.Store
	nodes    []*node
	pods     map[string]*mpod  // by uid
	holder   map[string]string // address -> uid of the pod whose network has it
	seq      int
	failures []string
	apps     *ipalloctest.View // resolves pods' apps
	reclaims int               // allocations that took over another app's reservation
	prepared int               // ADDs that got prepared addresses
}

type node struct {
	mu    sync.Mutex // serializes restarts against calls
	name  string
	view  *ipalloctest.View
	alloc *ipalloc.Allocator
}

type mpod struct {
	pod   *corev1.Pod
	app   *v1alpha1.App // nil: not retained
	node  *node
	addrs []string
	state string // pending, running, terminating, gone
	busy  bool
}

var apps = []struct {
	kind, owner string
	ann         map[string]string
}{
	{"ReplicaSet", "web-5d8f", nil},
	{"ReplicaSet", "api-77c9", nil},
	{"StatefulSet", "db", nil},
	{"ReplicaSet", "web-5d8f", map[string]string{v1alpha1.AnnotationRetain: "false"}},
	{"Job", "once", nil},
	{"ReplicaSet", "x-1", map[string]string{v1alpha1.AnnotationGroup: "shared"}},
}

func (m *model) restart(n *node) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.view = m.store.View(true)
	a, err := ipalloc.New(ipalloc.Config{Store: n.view, Node: n.name})
	if err != nil {
		m.t.Fatal(err)
	}
	n.alloc = a
}

// step runs one random operation.
func (m *model) step(r *rand.Rand) {
	m.mu.Lock()
	switch op := r.IntN(11); {
	case op < 2: // a new pod
		m.seq++
		app := apps[r.IntN(len(apps))]
		name := fmt.Sprintf("%s-%d", app.owner, m.seq)
		if app.kind == "StatefulSet" {
			// Ordinals 0..3; a name in use waits.
			name = fmt.Sprintf("db-%d", r.IntN(4))
			for _, p := range m.pods {
				if p.pod.Name == name && p.state != "gone" {
					m.mu.Unlock()
					return
				}
			}
		}
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(fmt.Sprintf("uid-%d", m.seq)),
			Annotations: app.ann, OwnerReferences: []metav1.OwnerReference{{Kind: app.kind, Name: app.owner, Controller: ptr.To(true)}}}}
		m.store.SetPod(p)
		owner, err := ipalloc.AppOf(m.apps, p)
		if err != nil {
			m.failures = append(m.failures, fmt.Sprintf("app of %s: %v", name, err))
		}
		m.pods[string(p.UID)] = &mpod{pod: p, app: owner, node: m.nodes[r.IntN(len(m.nodes))], state: "pending"}
		m.mu.Unlock()
	case op < 5: // ADD of a pending pod
		p := m.pick(r, "pending")
		m.mu.Unlock()
		if p == nil {
			return
		}
		p.node.mu.Lock()
		als, err := p.node.alloc.Allocate(context.Background(), ipalloc.Request{ContainerID: "c-" + string(p.pod.UID), IfName: "eth0",
			PodNamespace: "ns", PodName: p.pod.Name, PodUID: p.pod.UID})
		bind := r.IntN(2) == 0
		for _, a := range als {
			// The server records the container after the answer, or the
			// container's DEL comes first and releases the claims that do
			// not record it (freePrepared, below).
			if a.Prepared && bind {
				m.mu.Lock()
				m.prepared++
				m.mu.Unlock()
				if err := p.node.alloc.BindContainer(context.Background(), a.Claim, p.pod.UID, "c-"+string(p.pod.UID), ""); err != nil {
					m.fail("bind %s: %v", p.pod.Name, err)
				}
			}
		}
		p.node.mu.Unlock()
		m.mu.Lock()
		defer m.mu.Unlock()
		p.busy = false
		if err != nil {
			if !ipalloc.Retryable(err) && !errors.Is(err, ipalloc.ErrExhausted) {
				m.failures = append(m.failures, fmt.Sprintf("ADD %s: unexpected error %v", p.pod.Name, err))
			}
			return
		}
		for _, a := range als {
			addr := a.Address.Addr().String()
			if h, ok := m.holder[addr]; ok && h != string(p.pod.UID) {
				m.failures = append(m.failures, fmt.Sprintf("ADD %s got %s, still held by %s (%s)", p.pod.Name, addr, m.pods[h].pod.Name, m.pods[h].state))
			}
			m.holder[addr] = string(p.pod.UID)
			p.addrs = append(p.addrs, addr)
			if a.Reclaimed {
				m.reclaims++
				if a.PreviousApp == nil || p.app != nil && ipalloc.AppKey(a.Pool, *a.PreviousApp) == ipalloc.AppKey(a.Pool, *p.app) {
					m.failures = append(m.failures, fmt.Sprintf("ADD %s (app %v) reclaimed %s from app %v: not another app's", p.pod.Name, p.app, addr, a.PreviousApp))
				}
			}
		}
		p.state = "running"
	case op < 7: // deletion starts
		p := m.pick(r, "running", "pending")
		if p != nil {
			p.busy = false
			p.pod = p.pod.DeepCopy()
			p.pod.DeletionTimestamp = &metav1.Time{Time: time.Now()}
			m.store.SetPod(p.pod)
			p.state = "terminating"
		}
		m.mu.Unlock()
	case op < 9: // teardown: the network goes, then CNI DEL, then the pod object
		p := m.pick(r, "terminating")
		if p == nil {
			m.mu.Unlock()
			return
		}
		for _, a := range p.addrs {
			if m.holder[a] == string(p.pod.UID) {
				delete(m.holder, a)
			}
		}
		m.mu.Unlock()
		p.node.mu.Lock()
		err := p.node.alloc.Release(context.Background(), "c-"+string(p.pod.UID), "eth0")
		p.node.mu.Unlock()
		m.mu.Lock()
		defer m.mu.Unlock()
		p.busy = false
		if err != nil {
			m.failures = append(m.failures, fmt.Sprintf("DEL %s: %v", p.pod.Name, err))
			return
		}
		m.store.RemovePod("ns", p.pod.Name)
		p.state = "gone"
		m.mu.Unlock()
		m.freePrepared(p)
		m.mu.Lock()
	case op == 10: // the agent prepares a pending pod's addresses
		p := m.pick(r, "pending")
		m.mu.Unlock()
		if p == nil {
			return
		}
		p.node.mu.Lock()
		_, err := p.node.alloc.Prepare(context.Background(), ipalloc.Request{IfName: "eth0", PodNamespace: "ns", PodName: p.pod.Name, PodUID: p.pod.UID})
		p.node.mu.Unlock()
		m.mu.Lock()
		defer m.mu.Unlock()
		p.busy = false
		if err != nil && !ipalloc.Retryable(err) && !errors.Is(err, ipalloc.ErrExhausted) {
			m.failures = append(m.failures, fmt.Sprintf("prepare %s: unexpected error %v", p.pod.Name, err))
		}
	default: // an agent restarts, or an informer catches up
		n := m.nodes[r.IntN(len(m.nodes))]
		m.mu.Unlock()
		if r.IntN(2) == 0 {
			m.restart(n)
		} else {
			n.mu.Lock()
			n.view.Sync()
			n.mu.Unlock()
		}
	}
}

func (m *model) fail(format string, args ...any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failures = append(m.failures, fmt.Sprintf(format, args...))
}

// freePrepared releases the pod's claims that record no container: as the
// server's DEL does when it comes before the container is recorded, and
// berth-controller for the claims of pods that are gone.
func (m *model) freePrepared(p *mpod) {
	for _, c := range m.store.Claims() {
		if c.Spec.Pod.UID == p.pod.UID && c.Spec.ContainerID == "" && c.Spec.State == v1alpha1.ClaimBound {
			p.node.mu.Lock()
			err := p.node.alloc.ReleasePrepared(context.Background(), c.Name, p.pod.UID)
			p.node.mu.Unlock()
			if err != nil {
				m.fail("release prepared %s: %v", c.Name, err)
			}
		}
	}
}

// pick returns a random idle pod in one of the states and marks it busy.
func (m *model) pick(r *rand.Rand, states ...string) *mpod {
	p, ok := ipalloctest.Pick(r, m.pods, func(p *mpod) bool { return !p.busy && slices.Contains(states, p.state) })
	if ok {
		p.busy = true
	}
	return p
}

// TestAllocator_property runs random interleavings of pod creation, ADD,
// deletion, DEL, agent restarts and lagging caches on several nodes at
// once, and checks that no address is ever given to a pod while another
// pod's network still has it, that a full pool hands over only other apps'
// reservations (reclaimReservations, on for even seeds), and that nothing
// leaks once all pods are gone.
func TestAllocator_property(t *testing.T) {
	reclaims, prepared := 0, 0
	for seed := range uint64(40) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			m := &model{t: t, store: ipalloctest.New(), pods: map[string]*mpod{}, holder: map[string]string{}}
			// 14 addresses: contention and exhaustion.
			m.store.AddPool(pool("p", "10.0.0.0/28", func(p *v1alpha1.IPPool) { p.Spec.ReclaimReservations = ptr.To(seed%2 == 0) }))
			m.apps = m.store.View(false)
			for i := range 4 {
				n := &node{name: fmt.Sprintf("node-%d", i)}
				m.restart(n)
				m.nodes = append(m.nodes, n)
			}
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(seed, uint64(w)))
					for range 400 {
						m.step(r)
					}
				}()
			}
			wg.Wait()
			// Drain: delete every pod, run every DEL.
			for _, p := range m.pods {
				if p.state == "pending" || p.state == "running" {
					p.state = "terminating"
				}
				if p.state == "terminating" {
					if err := p.node.alloc.Release(context.Background(), "c-"+string(p.pod.UID), "eth0"); err != nil {
						t.Fatalf("final DEL %s: %v", p.pod.Name, err)
					}
					m.freePrepared(p)
				}
			}
			for _, f := range m.failures {
				t.Error(f)
			}
			if seed%2 == 1 && m.reclaims > 0 {
				t.Errorf("%d reservations reclaimed with reclaimReservations false", m.reclaims)
			}
			reclaims += m.reclaims
			prepared += m.prepared
			for _, c := range m.store.Claims() {
				if c.Spec.State != v1alpha1.ClaimReserved || c.Spec.App == nil {
					t.Errorf("claim %s left %s (app %v) after every pod is gone", c.Name, c.Spec.State, c.Spec.App)
				}
			}
		})
	}
	if reclaims == 0 {
		t.Error("no seed reclaimed a reservation: the test does not exercise reclaimReservations")
	}
	if prepared == 0 {
		t.Error("no ADD got prepared addresses: the test does not exercise Prepare")
	}
	t.Logf("%d reservations reclaimed, %d ADDs of prepared addresses", reclaims, prepared)
}
