package ipalloc_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/ipalloc"
	"github.com/berth-io/berth/internal/ipalloc/ipalloctest"
)

// blindView is one agent's view whose caches never see the other agent's
// pool (so its overlap check passes) and, between syncs, none of the other
// agent's claims: the lag of two pools created or edited into overlap at
// the same moment, stretched over the whole run.
// Each of its creates is followed by a few yields (by r, if set), so that
// the other agent's create and read often come between ours and our read.
type blindView struct {
	*ipalloctest.View
	hide string
	r    *rand.Rand
	// created and read, if set, are called after each create and each
	// read of the API server.
	created, read func()
}

func (b blindView) LiveClaimsOfAddress(ctx context.Context, addr, rv string) ([]*v1alpha1.IPClaim, error) {
	cs, err := b.View.LiveClaimsOfAddress(ctx, addr, rv)
	if b.read != nil {
		b.read()
	}
	return cs, err
}

func (b blindView) Create(ctx context.Context, c *v1alpha1.IPClaim) error {
	err := b.View.Create(ctx, c)
	if b.r != nil {
		for range b.r.IntN(4) {
			runtime.Gosched()
		}
	}
	if b.created != nil {
		b.created()
	}
	return err
}

func (b blindView) Pools() ([]*v1alpha1.IPPool, error) {
	all, err := b.View.Pools()
	var out []*v1alpha1.IPPool
	for _, p := range all {
		if p.Name != b.hide {
			out = append(out, p)
		}
	}
	return out, err
}

func (b blindView) Pool(name string) (*v1alpha1.IPPool, error) {
	if name == b.hide {
		return nil, fmt.Errorf("ippool %s: %w", name, ipalloc.ErrNotFound)
	}
	return b.View.Pool(name)
}

// TestAllocator_Allocate_overlappingPoolsLaggingCaches: two agents, each
// allocating from its own one of two pools with the same 6 addresses, race
// with ADDs and DELs of non-retained pods while neither agent's cache sees
// the other's pool, nor (until an occasional sync) its claims. Over many
// seeds, no address is ever held by two pods at once; when the races are
// over the API server holds one claim per address at most, each its pod's;
// and once every pod is gone no claim is left (an agent that backed off
// deleted its claim).
func TestAllocator_Allocate_overlappingPoolsLaggingCaches(t *testing.T) {
	const seeds, opsPerAgent = 200, 24
	for seed := range uint64(seeds) {
		s := ipalloctest.New()
		s.AddPool(pool("a", "10.7.0.0/29"))
		s.AddPool(pool("b", "10.7.0.0/29"))
		var (
			mu     sync.Mutex
			holder = map[string]string{} // address -> pod whose network has it
			fails  []string
		)
		var wg sync.WaitGroup
		dels := make([]func(), 2)
		for i, name := range []string{"a", "b"} {
			other := map[string]string{"a": "b", "b": "a"}[name]
			view := s.View(true)
			r := rand.New(rand.NewPCG(seed, uint64(i)))
			alloc, err := ipalloc.New(ipalloc.Config{Store: blindView{View: view, hide: other, r: rand.New(rand.NewPCG(seed, uint64(i)+2))},
				Node: "node-" + name, Now: func() time.Time { return t0 }})
			if err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				var live []*corev1.Pod
				del := func(k int) {
					p := live[k]
					live = append(live[:k], live[k+1:]...)
					mu.Lock()
					for a, h := range holder {
						if h == p.Name {
							delete(holder, a)
						}
					}
					mu.Unlock()
					if err := alloc.Release(context.Background(), cid(p), "eth0"); err != nil {
						mu.Lock()
						fails = append(fails, fmt.Sprintf("DEL %s: %v", p.Name, err))
						mu.Unlock()
					}
				}
				for op := range opsPerAgent {
					switch k := r.IntN(10); {
					case k < 2:
						view.Sync() // the cache catches up for a moment
					case k < 4 && len(live) > 0:
						del(r.IntN(len(live)))
					default:
						p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("%s-%d", name, op),
							UID: types.UID(fmt.Sprintf("uid-%d-%s-%d", seed, name, op)), Annotations: map[string]string{v1alpha1.AnnotationPool: name}}}
						s.SetPod(p)
						als, err := alloc.Allocate(context.Background(), ipalloc.Request{ContainerID: cid(p), IfName: "eth0", PodNamespace: "ns", PodName: p.Name, PodUID: p.UID})
						mu.Lock()
						switch {
						case errors.Is(err, ipalloc.ErrExhausted):
							// Every address is another's, or the race was lost at each.
						case err != nil:
							fails = append(fails, fmt.Sprintf("ADD %s: %v", p.Name, err))
						default:
							addr := als[0].Address.Addr().String()
							if h, ok := holder[addr]; ok {
								fails = append(fails, fmt.Sprintf("DUPLICATE: %s got %s (pool %s), held by %s", p.Name, addr, als[0].Pool, h))
							}
							holder[addr] = p.Name
							live = append(live, p)
						}
						mu.Unlock()
					}
					runtime.Gosched()
				}
				dels[i] = func() {
					for len(live) > 0 {
						del(0)
					}
				}
			}()
		}
		wg.Wait()
		byAddr := map[string][]string{}
		for _, c := range s.Claims() {
			byAddr[c.Spec.Address] = append(byAddr[c.Spec.Address], c.Name)
			if h := holder[c.Spec.Address]; h != c.Spec.Pod.Name {
				t.Errorf("seed %d: claim %s is %s's, the address is held by %q", seed, c.Name, c.Spec.Pod.Name, h)
			}
		}
		for addr, names := range byAddr {
			if len(names) > 1 {
				t.Errorf("seed %d: %d claims of %s: %v", seed, len(names), addr, names)
			}
		}
		for _, d := range dels {
			d()
		}
		for _, f := range fails {
			t.Errorf("seed %d: %s", seed, f)
		}
		if left := s.Claims(); len(left) != 0 {
			for _, c := range left {
				t.Errorf("seed %d: claim %s (%s) left after every pod is gone", seed, c.Name, c.Spec.State)
			}
		}
		if t.Failed() {
			return
		}
	}
}

// TestAllocator_Allocate_overlappingPoolsSameMoment: two agents whose
// caches never see each other's pool create the claims of the one address
// both pools hand out, and both read the API server before either acts on
// it: both see two claims of it, and both back off (their pods' ADDs fail
// as exhausted, leaving no claim). A later ADD, alone, gets it, and the
// other pool's next ADD does not.
func TestAllocator_Allocate_overlappingPoolsSameMoment(t *testing.T) {
	one := func(p *v1alpha1.IPPool) { p.Spec.IncludeRanges = []string{"10.7.0.5-10.7.0.5"} }
	s := ipalloctest.New()
	s.AddPool(pool("a", "10.7.0.0/24", one))
	s.AddPool(pool("b", "10.7.0.0/24", one))
	var created, read sync.WaitGroup
	created.Add(2)
	read.Add(2)
	allocs := map[string]*ipalloc.Allocator{}
	for name, other := range map[string]string{"a": "b", "b": "a"} {
		var onceCreated, onceRead sync.Once
		alloc, err := ipalloc.New(ipalloc.Config{Store: blindView{View: s.View(true), hide: other,
			// Each agent's first create waits for the other's, and its read
			// then too: neither deletes its claim before both read.
			created: func() { onceCreated.Do(func() { created.Done(); created.Wait() }) },
			read:    func() { onceRead.Do(func() { read.Done(); read.Wait() }) },
		}, Node: "node-" + name, Now: func() time.Time { return t0 }})
		if err != nil {
			t.Fatal(err)
		}
		allocs[name] = alloc
	}
	add := func(name, podName string) ([]ipalloc.Allocation, error) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: podName, UID: types.UID("uid-" + podName),
			Annotations: map[string]string{v1alpha1.AnnotationPool: name}}}
		s.SetPod(p)
		return allocs[name].Allocate(context.Background(), ipalloc.Request{ContainerID: cid(p), IfName: "eth0", PodNamespace: "ns", PodName: p.Name, PodUID: p.UID})
	}
	errs := make(chan error, 2)
	for _, name := range []string{"a", "b"} {
		go func() {
			als, err := add(name, "first-"+name)
			if err == nil {
				err = fmt.Errorf("pod first-%s got %s from pool %s", name, als[0].Address, als[0].Pool)
			}
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; !errors.Is(err, ipalloc.ErrExhausted) {
			t.Errorf("ADD at the same moment: %v, want both to back off (exhausted)", err)
		}
	}
	if left := s.Claims(); len(left) != 0 {
		t.Fatalf("claims left after both backed off: %d (%s first)", len(left), left[0].Name)
	}
	als, err := add("b", "later-b")
	if err != nil || als[0].Address.Addr().String() != "10.7.0.5" {
		t.Fatalf("a later ADD alone: %v, %v; want 10.7.0.5", als, err)
	}
	if _, err := add("a", "later-a"); !errors.Is(err, ipalloc.ErrExhausted) {
		t.Fatalf("ADD in the other pool after it: %v, want exhausted (pool b's claim has the address)", err)
	}
}

// unreachableView fails every read of the API server that bypasses the
// cache.
type unreachableView struct{ *ipalloctest.View }

func (unreachableView) LiveClaimsOfAddress(context.Context, string, string) ([]*v1alpha1.IPClaim, error) {
	return nil, errors.New("dial tcp 10.96.0.1:443: i/o timeout")
}

// TestAllocator_Allocate_liveReadFails: when the read after the create
// fails, the address may be another pool's: the claim is deleted and ADD
// fails with the read's error.
func TestAllocator_Allocate_liveReadFails(t *testing.T) {
	s := ipalloctest.New()
	s.AddPool(pool("a", "10.7.0.0/29"))
	alloc, err := ipalloc.New(ipalloc.Config{Store: unreachableView{s.View(false)}, Node: "node-a", Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "x", UID: "uid-x"}}
	s.SetPod(p)
	_, err = alloc.Allocate(context.Background(), ipalloc.Request{ContainerID: cid(p), IfName: "eth0", PodNamespace: "ns", PodName: "x", PodUID: p.UID, Pools: []string{"a"}})
	if err == nil || !strings.Contains(err.Error(), "other pools' claims of 10.7.0.") || !strings.Contains(err.Error(), "i/o timeout") {
		t.Fatalf("ADD: %v, want the failed read", err)
	}
	if left := s.Claims(); len(left) != 0 {
		t.Fatalf("claim %s left after the failed read", left[0].Name)
	}
}
