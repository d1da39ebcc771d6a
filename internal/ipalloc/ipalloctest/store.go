// Package ipalloctest is an in-memory ipalloc.Store for tests: claims are checked
// like the API server checks them (name uniqueness, resourceVersion), and
// reads can lag behind writes like an informer cache.
package ipalloctest

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/ipalloc"
)

// Store is the API server's state, shared by every View.
type Store struct {
	mu     sync.Mutex
	rv     int
	pools  map[string]*v1alpha1.IPPool
	nss    map[string]*corev1.Namespace
	pods   map[string]*corev1.Pod
	rss    map[string]*appsv1.ReplicaSet
	claims map[string]*v1alpha1.IPClaim
	// Writes counts successful claim writes.
	Writes int
}

// New returns an empty Store.
func New() *Store {
	return &Store{
		pools: map[string]*v1alpha1.IPPool{}, nss: map[string]*corev1.Namespace{},
		pods: map[string]*corev1.Pod{}, rss: map[string]*appsv1.ReplicaSet{},
		claims: map[string]*v1alpha1.IPClaim{},
	}
}

func (s *Store) next() string { s.rv++; return strconv.Itoa(s.rv) }

// AddPool adds or replaces a pool.
func (s *Store) AddPool(p *v1alpha1.IPPool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p = p.DeepCopy()
	if p.UID == "" {
		p.UID = types.UID("pool-" + p.Name)
	}
	p.ResourceVersion = s.next()
	s.pools[p.Name] = p
}

// AddNamespace adds or replaces a namespace.
func (s *Store) AddNamespace(ns *corev1.Namespace) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nss[ns.Name] = ns.DeepCopy()
}

// AddReplicaSet adds or replaces a ReplicaSet.
func (s *Store) AddReplicaSet(rs *appsv1.ReplicaSet) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rss[rs.Namespace+"/"+rs.Name] = rs.DeepCopy()
}

// SetPod adds or replaces a pod (creating its namespace if missing).
func (s *Store) SetPod(p *corev1.Pod) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pods[p.Namespace+"/"+p.Name] = p.DeepCopy()
	if _, ok := s.nss[p.Namespace]; !ok {
		s.nss[p.Namespace] = &corev1.Namespace{}
		s.nss[p.Namespace].Name = p.Namespace
	}
}

// RemovePod removes a pod object.
func (s *Store) RemovePod(namespace, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pods, namespace+"/"+name)
}

// Claims returns a copy of every claim.
func (s *Store) Claims() []*v1alpha1.IPClaim {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*v1alpha1.IPClaim
	for _, c := range s.claims {
		out = append(out, c.DeepCopy())
	}
	return out
}

// PutClaim writes a claim as the controller would, unconditionally.
func (s *Store) PutClaim(c *v1alpha1.IPClaim) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c = c.DeepCopy()
	c.ResourceVersion = s.next()
	s.claims[c.Name] = c
}

// View returns a reader of the store whose claim reads are as of its last
// Sync (lagging like an informer cache) when lagging is true, else live.
// Its own writes show at once, like the agent's read-your-writes store.
func (s *Store) View(lagging bool) *View {
	v := &View{s: s, lagging: lagging, own: map[string]*v1alpha1.IPClaim{}}
	v.Sync()
	return v
}

// View is one allocator's view of a Store.
type View struct {
	s       *Store
	lagging bool
	mu      sync.Mutex
	snap    map[string]*v1alpha1.IPClaim
	own     map[string]*v1alpha1.IPClaim // own writes since the last Sync; nil value: deleted
}

var _ ipalloc.Store = (*View)(nil)

// Sync brings a lagging view up to date. The store's lock is held across
// the read and the reset of the view's own writes, and a write takes both
// locks in that order too (commit): so the view never loses one of its
// own writes, nor shows an older one of them over a newer, as the
// agent's overlay does not.
func (v *View) Sync() {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	snap := make(map[string]*v1alpha1.IPClaim, len(v.s.claims))
	for k, c := range v.s.claims {
		snap[k] = c
	}
	v.mu.Lock()
	v.snap, v.own = snap, map[string]*v1alpha1.IPClaim{}
	v.mu.Unlock()
}

func (v *View) claims() map[string]*v1alpha1.IPClaim {
	if !v.lagging {
		v.s.mu.Lock()
		defer v.s.mu.Unlock()
		out := make(map[string]*v1alpha1.IPClaim, len(v.s.claims))
		for k, c := range v.s.claims {
			out[k] = c
		}
		return out
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make(map[string]*v1alpha1.IPClaim, len(v.snap))
	for k, c := range v.snap {
		out[k] = c
	}
	for k, c := range v.own {
		if c == nil {
			delete(out, k)
		} else {
			out[k] = c
		}
	}
	return out
}

func (v *View) Pool(name string) (*v1alpha1.IPPool, error) {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	if p, ok := v.s.pools[name]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("ippool %s: %w", name, ipalloc.ErrNotFound)
}

func (v *View) Pools() ([]*v1alpha1.IPPool, error) {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	var out []*v1alpha1.IPPool
	for _, p := range v.s.pools {
		out = append(out, p)
	}
	return out, nil
}

func (v *View) Namespace(name string) (*corev1.Namespace, error) {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	if ns, ok := v.s.nss[name]; ok {
		return ns, nil
	}
	return nil, fmt.Errorf("namespace %s: %w", name, ipalloc.ErrNotFound)
}

func (v *View) Pod(namespace, name string) (*corev1.Pod, error) {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	if p, ok := v.s.pods[namespace+"/"+name]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("pod %s/%s: %w", namespace, name, ipalloc.ErrNotFound)
}

func (v *View) ReplicaSet(namespace, name string) (*appsv1.ReplicaSet, error) {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	if rs, ok := v.s.rss[namespace+"/"+name]; ok {
		return rs, nil
	}
	return nil, fmt.Errorf("replicaset %s/%s: %w", namespace, name, ipalloc.ErrNotFound)
}

func (v *View) Claim(name string) (*v1alpha1.IPClaim, error) {
	if c, ok := v.claims()[name]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("ipclaim %s: %w", name, ipalloc.ErrNotFound)
}

func (v *View) filter(f func(*v1alpha1.IPClaim) bool) []*v1alpha1.IPClaim {
	var out []*v1alpha1.IPClaim
	for _, c := range v.claims() {
		if f(c) {
			out = append(out, c)
		}
	}
	return out
}

func (v *View) ClaimsOfApp(pool string, app v1alpha1.App) ([]*v1alpha1.IPClaim, error) {
	key := ipalloc.AppKey(pool, app)
	return v.filter(func(c *v1alpha1.IPClaim) bool {
		return c.Spec.App != nil && ipalloc.AppKey(c.Spec.Pool, *c.Spec.App) == key
	}), nil
}

func (v *View) ClaimsOfContainer(id string) ([]*v1alpha1.IPClaim, error) {
	return v.filter(func(c *v1alpha1.IPClaim) bool { return c.Spec.ContainerID == id }), nil
}

func (v *View) ClaimsOfPod(uid types.UID) ([]*v1alpha1.IPClaim, error) {
	return v.filter(func(c *v1alpha1.IPClaim) bool { return c.Spec.Pod.UID == uid }), nil
}

func (v *View) ClaimsOfNode(node string) ([]*v1alpha1.IPClaim, error) {
	return v.filter(func(c *v1alpha1.IPClaim) bool { return c.Spec.Node == node }), nil
}

func (v *View) ClaimsOfAddress(addr string) ([]*v1alpha1.IPClaim, error) {
	return v.filter(func(c *v1alpha1.IPClaim) bool { return c.Spec.Address == addr }), nil
}

// LiveClaimsOfAddress reads the store as of now (never the view's
// snapshot), which is as of rv or later.
func (v *View) LiveClaimsOfAddress(_ context.Context, addr, _ string) ([]*v1alpha1.IPClaim, error) {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	var out []*v1alpha1.IPClaim
	for _, c := range v.s.claims {
		if c.Spec.Address == addr {
			out = append(out, c)
		}
	}
	return out, nil
}

func (v *View) ReservedClaims(pool string) ([]*v1alpha1.IPClaim, error) {
	return v.filter(func(c *v1alpha1.IPClaim) bool {
		return c.Spec.Pool == pool && c.Spec.State == v1alpha1.ClaimReserved
	}), nil
}

func (v *View) Create(_ context.Context, c *v1alpha1.IPClaim) error {
	v.s.mu.Lock()
	if _, ok := v.s.claims[c.Name]; ok {
		v.s.mu.Unlock()
		return fmt.Errorf("ipclaim %s: %w", c.Name, ipalloc.ErrExists)
	}
	v.commit(c)
	return nil
}

func (v *View) Update(_ context.Context, c *v1alpha1.IPClaim) error {
	v.s.mu.Lock()
	cur, ok := v.s.claims[c.Name]
	if !ok {
		v.s.mu.Unlock()
		return fmt.Errorf("ipclaim %s: %w", c.Name, ipalloc.ErrNotFound)
	}
	if cur.ResourceVersion != c.ResourceVersion {
		v.s.mu.Unlock()
		return fmt.Errorf("ipclaim %s: %w", c.Name, ipalloc.ErrConflict)
	}
	v.commit(c)
	return nil
}

func (v *View) Delete(_ context.Context, c *v1alpha1.IPClaim) error {
	v.s.mu.Lock()
	cur, ok := v.s.claims[c.Name]
	if ok && cur.ResourceVersion != c.ResourceVersion {
		v.s.mu.Unlock()
		return fmt.Errorf("ipclaim %s: %w", c.Name, ipalloc.ErrConflict)
	}
	delete(v.s.claims, c.Name)
	v.s.Writes++
	v.mu.Lock()
	v.own[c.Name] = nil
	v.mu.Unlock()
	v.s.mu.Unlock()
	return nil
}

// commit stores c at a new resourceVersion, with v.s.mu held (and
// released here), and remembers it as this view's own write.
func (v *View) commit(c *v1alpha1.IPClaim) {
	c.ResourceVersion = v.s.next()
	v.s.claims[c.Name] = c.DeepCopy()
	v.s.Writes++
	v.mu.Lock()
	v.own[c.Name] = c.DeepCopy()
	v.mu.Unlock()
	v.s.mu.Unlock()
}
