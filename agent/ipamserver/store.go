package ipamserver

import (
	"context"
	"fmt"
	"iter"
	"strconv"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/claimindex"
	"github.com/berth-io/berth/internal/ipalloc"
)

// Field indexes of IPClaims in the cache.
const (
	indexApp       = "berth.io/app"
	indexContainer = "spec.containerID"
	indexPodUID    = "spec.pod.uid"
	indexNode      = "spec.node"
	indexAddress   = "spec.address"
	// indexReserved is the pool of a Reserved claim (none otherwise).
	indexReserved = "berth.io/reserved-in-pool"
)

// overlayTTL bounds how long the store's own writes shadow the cache.
const overlayTTL = 30 * time.Second

// liveReadTimeout bounds one read that bypasses the cache (within the
// caller's deadline; an ADD has 25s by default).
const liveReadTimeout = 10 * time.Second

// claimIndexes are the IPClaim indexes the store reads by: index name to
// the claim's value ("": not indexed). The overlay of the store's own
// writes keeps them too.
var claimIndexes = map[string]func(*v1alpha1.IPClaim) string{
	indexApp: func(c *v1alpha1.IPClaim) string {
		if c.Spec.App == nil {
			return ""
		}
		return ipalloc.AppKey(c.Spec.Pool, *c.Spec.App)
	},
	indexContainer: func(c *v1alpha1.IPClaim) string { return c.Spec.ContainerID },
	indexPodUID:    func(c *v1alpha1.IPClaim) string { return string(c.Spec.Pod.UID) },
	indexNode:      func(c *v1alpha1.IPClaim) string { return c.Spec.Node },
	indexAddress:   func(c *v1alpha1.IPClaim) string { return c.Spec.Address },
	indexReserved: func(c *v1alpha1.IPClaim) string {
		if c.Spec.State != v1alpha1.ClaimReserved {
			return ""
		}
		return c.Spec.Pool
	},
}

// IndexClaims registers the IPClaim indexes the store reads by. Call it
// before the cache starts.
func IndexClaims(ctx context.Context, idx client.FieldIndexer) error {
	return claimindex.Register(ctx, idx, claimIndexes)
}

// Store is the agent's ipalloc.Store: reads from an informer cache (falling
// back to the API server when the cache has not seen an object yet), writes
// through the API server with optimistic concurrency, and shows its own
// writes at once (read-your-writes) until the cache has caught up.
type Store struct {
	cache  cache.Cache
	api    client.Reader // uncached reads
	writer client.Client

	mu      sync.Mutex
	overlay map[string]overlayEntry
	// indexed holds the names of the overlay's claims by index and value,
	// so that a list looks at the few that match, not at every recent
	// write.
	indexed map[indexKey]map[string]struct{}
	swept   time.Time
	now     func() time.Time
}

type indexKey struct{ index, value string }

type overlayEntry struct {
	claim *v1alpha1.IPClaim // nil: deleted
	uid   types.UID         // of the deleted claim
	rv    int64
	until time.Time
}

// NewStore returns a Store reading c (claims indexed by IndexClaims) and
// api, writing through w.
func NewStore(c cache.Cache, api client.Reader, w client.Client) *Store {
	return &Store{cache: c, api: api, writer: w, overlay: map[string]overlayEntry{}, indexed: map[indexKey]map[string]struct{}{}, now: time.Now}
}

var _ ipalloc.Store = (*Store)(nil)

func (s *Store) get(key client.ObjectKey, obj client.Object) error {
	err := s.cache.Get(context.Background(), key, obj)
	if apierrors.IsNotFound(err) {
		// Not seen yet (just created): ask the API server.
		ctx, cancel := context.WithTimeout(context.Background(), liveReadTimeout)
		defer cancel()
		err = s.api.Get(ctx, key, obj)
	}
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%s: %w", key, ipalloc.ErrNotFound)
	}
	return err
}

// Pool implements ipalloc.Store.
func (s *Store) Pool(name string) (*v1alpha1.IPPool, error) {
	p := &v1alpha1.IPPool{}
	return p, s.get(client.ObjectKey{Name: name}, p)
}

// Pools implements ipalloc.Store.
func (s *Store) Pools() ([]*v1alpha1.IPPool, error) {
	var l v1alpha1.IPPoolList
	if err := s.cache.List(context.Background(), &l); err != nil {
		return nil, err
	}
	out := make([]*v1alpha1.IPPool, len(l.Items))
	for i := range l.Items {
		out[i] = &l.Items[i]
	}
	return out, nil
}

// Namespace implements ipalloc.Store.
func (s *Store) Namespace(name string) (*corev1.Namespace, error) {
	ns := &corev1.Namespace{}
	return ns, s.get(client.ObjectKey{Name: name}, ns)
}

// Pod implements ipalloc.Store.
func (s *Store) Pod(namespace, name string) (*corev1.Pod, error) {
	p := &corev1.Pod{}
	return p, s.get(client.ObjectKey{Namespace: namespace, Name: name}, p)
}

// LivePod reads a pod from the API server, bypassing the cache (the cache
// may still have an older pod of the same name).
func (s *Store) LivePod(namespace, name string) (*corev1.Pod, error) {
	p := &corev1.Pod{}
	ctx, cancel := context.WithTimeout(context.Background(), liveReadTimeout)
	defer cancel()
	err := s.api.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, p)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("pod %s/%s: %w", namespace, name, ipalloc.ErrNotFound)
	}
	return p, err
}

// ReplicaSet implements ipalloc.Store.
func (s *Store) ReplicaSet(namespace, name string) (*appsv1.ReplicaSet, error) {
	rs := &appsv1.ReplicaSet{}
	return rs, s.get(client.ObjectKey{Namespace: namespace, Name: name}, rs)
}

// Claim implements ipalloc.Store.
func (s *Store) Claim(name string) (*v1alpha1.IPClaim, error) {
	c := &v1alpha1.IPClaim{}
	err := s.cache.Get(context.Background(), client.ObjectKey{Name: name}, c)
	if apierrors.IsNotFound(err) {
		c = nil
	} else if err != nil {
		return nil, err
	}
	if c = s.shadow(name, c); c == nil {
		return nil, fmt.Errorf("ipclaim %s: %w", name, ipalloc.ErrNotFound)
	}
	return c, nil
}

// list returns the claims whose index field has value, as the cache
// indexes them and as the store's overlay of its own writes shows them
// now (a claim the overlay changed is listed only if it still has value).
func (s *Store) list(field, value string) ([]*v1alpha1.IPClaim, error) {
	var l v1alpha1.IPClaimList
	if err := s.cache.List(context.Background(), &l, client.MatchingFields{field: value}); err != nil {
		return nil, err
	}
	match := func(c *v1alpha1.IPClaim) bool { return claimIndexes[field](c) == value }
	seen := map[string]bool{}
	var out []*v1alpha1.IPClaim
	for i := range l.Items {
		seen[l.Items[i].Name] = true
		if c := s.shadow(l.Items[i].Name, &l.Items[i]); c != nil && match(c) {
			out = append(out, c)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name := range s.indexed[indexKey{field, value}] {
		if e := s.overlay[name]; !seen[name] && e.claim != nil && match(e.claim) {
			out = append(out, e.claim)
		}
	}
	return out, nil
}

// ClaimsOfApp implements ipalloc.Store.
func (s *Store) ClaimsOfApp(pool string, app v1alpha1.App) ([]*v1alpha1.IPClaim, error) {
	return s.list(indexApp, ipalloc.AppKey(pool, app))
}

// ClaimsOfContainer implements ipalloc.Store.
func (s *Store) ClaimsOfContainer(id string) ([]*v1alpha1.IPClaim, error) {
	return s.list(indexContainer, id)
}

// ClaimsOfPod implements ipalloc.Store.
func (s *Store) ClaimsOfPod(uid types.UID) ([]*v1alpha1.IPClaim, error) {
	return s.list(indexPodUID, string(uid))
}

// ClaimsOfNode implements ipalloc.Store.
func (s *Store) ClaimsOfNode(node string) ([]*v1alpha1.IPClaim, error) {
	return s.list(indexNode, node)
}

// ClaimsOfAddress implements ipalloc.Store.
func (s *Store) ClaimsOfAddress(addr string) ([]*v1alpha1.IPClaim, error) {
	return s.list(indexAddress, addr)
}

// LiveClaimsOfAddress implements ipalloc.Store: one list of IPClaims from the
// API server with the field selector spec.address=addr, which the IPClaim
// CRD declares in selectableFields. With rv, resourceVersionMatch
// NotOlderThan: the API server answers from its watch cache once that has
// reached rv, with no round trip to etcd (a consistent read, rv "", asks
// etcd for its latest revision and waits for the cache to reach that).
func (s *Store) LiveClaimsOfAddress(ctx context.Context, addr, rv string) ([]*v1alpha1.IPClaim, error) {
	ctx, cancel := context.WithTimeout(ctx, liveReadTimeout)
	defer cancel()
	opts := []client.ListOption{client.MatchingFields{indexAddress: addr}}
	if rv != "" {
		opts = append(opts, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: rv, ResourceVersionMatch: metav1.ResourceVersionMatchNotOlderThan}})
	}
	var l v1alpha1.IPClaimList
	if err := s.api.List(ctx, &l, opts...); err != nil {
		if apierrors.IsBadRequest(err) {
			return nil, fmt.Errorf("list ipclaims with spec.address=%s (is the IPClaim CRD of this release applied? it declares spec.address selectable): %w", addr, err)
		}
		return nil, fmt.Errorf("list ipclaims with spec.address=%s: %w", addr, err)
	}
	out := make([]*v1alpha1.IPClaim, len(l.Items))
	for i := range l.Items {
		out[i] = &l.Items[i]
	}
	return out, nil
}

// ReservedClaims implements ipalloc.Store.
func (s *Store) ReservedClaims(pool string) ([]*v1alpha1.IPClaim, error) {
	return s.list(indexReserved, pool)
}

// shadow returns what the store knows of the claim: its own later write,
// if the cache (c, nil when absent) has not caught up with it.
func (s *Store) shadow(name string, c *v1alpha1.IPClaim) *v1alpha1.IPClaim {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.overlay[name]
	if !ok {
		return c
	}
	caught := s.now().After(e.until)
	if c != nil {
		if rv, err := strconv.ParseInt(c.ResourceVersion, 10, 64); err == nil && rv >= e.rv {
			caught = true
		}
		if e.claim == nil && c.UID != e.uid {
			caught = true // deleted, and since created anew
		}
	} else if e.claim == nil {
		caught = true // deleted, and the cache agrees
	}
	if caught {
		s.drop(name)
		return c
	}
	return e.claim
}

// set records the overlay entry of a claim; s.mu held.
func (s *Store) set(name string, e overlayEntry) {
	s.drop(name)
	s.overlay[name] = e
	for k := range indexKeys(e.claim) {
		if s.indexed[k] == nil {
			s.indexed[k] = map[string]struct{}{}
		}
		s.indexed[k][name] = struct{}{}
	}
}

// drop removes the overlay entry of a claim; s.mu held.
func (s *Store) drop(name string) {
	e, ok := s.overlay[name]
	if !ok {
		return
	}
	delete(s.overlay, name)
	for k := range indexKeys(e.claim) {
		delete(s.indexed[k], name)
		if len(s.indexed[k]) == 0 {
			delete(s.indexed, k)
		}
	}
}

// indexKeys yields the index entries of c (none for nil: a deletion).
func indexKeys(c *v1alpha1.IPClaim) iter.Seq[indexKey] {
	return func(yield func(indexKey) bool) {
		if c == nil {
			return
		}
		for index, f := range claimIndexes {
			if v := f(c); v != "" && !yield(indexKey{index, v}) {
				return
			}
		}
	}
}

// remember shows the store's write of c at rv until the cache has it. Of
// two writes of one object whose calls end out of order, the later write
// stays.
func (s *Store) remember(name string, c *v1alpha1.IPClaim, rv string) {
	n, _ := strconv.ParseInt(rv, 10, 64)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweep()
	if e, ok := s.overlay[name]; ok && e.rv > n && c != nil && e.objectUID() == c.UID {
		return
	}
	if c != nil {
		c = c.DeepCopy()
	}
	s.set(name, overlayEntry{claim: c, rv: n, until: s.now().Add(overlayTTL)})
}

// objectUID is the UID of the object the entry is about.
func (e overlayEntry) objectUID() types.UID {
	if e.claim != nil {
		return e.claim.UID
	}
	return e.uid
}

// sweep drops expired overlay entries, at most once a second; s.mu held.
func (s *Store) sweep() {
	now := s.now()
	if now.Sub(s.swept) < time.Second {
		return
	}
	s.swept = now
	for name, e := range s.overlay {
		if now.After(e.until) {
			s.drop(name)
		}
	}
}

func (s *Store) forget(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drop(name)
}

// Create implements ipalloc.Store.
func (s *Store) Create(ctx context.Context, c *v1alpha1.IPClaim) error {
	err := s.writer.Create(ctx, c)
	if apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("ipclaim %s: %w", c.Name, ipalloc.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create ipclaim %s: %w", c.Name, err)
	}
	s.remember(c.Name, c, c.ResourceVersion)
	return nil
}

// Update implements ipalloc.Store.
func (s *Store) Update(ctx context.Context, c *v1alpha1.IPClaim) error {
	// Reset the claim's managedFields (a list of one empty entry; the API
	// server then stores none). Berth reads and updates claims and never
	// applies them, so their field ownership has no use, while tracking it
	// costs kube-apiserver about a third more CPU per update and makes
	// every stored claim and every watch event of it larger
	// (docs/benchmarks.md, -floor).
	c.ManagedFields = []metav1.ManagedFieldsEntry{{}}
	err := s.writer.Update(ctx, c)
	switch {
	case apierrors.IsConflict(err):
		s.forget(c.Name)
		return fmt.Errorf("ipclaim %s: %w", c.Name, ipalloc.ErrConflict)
	case apierrors.IsNotFound(err):
		s.forget(c.Name)
		return fmt.Errorf("ipclaim %s: %w", c.Name, ipalloc.ErrNotFound)
	case err != nil:
		return fmt.Errorf("update ipclaim %s: %w", c.Name, err)
	}
	s.remember(c.Name, c, c.ResourceVersion)
	return nil
}

// Delete implements ipalloc.Store.
func (s *Store) Delete(ctx context.Context, c *v1alpha1.IPClaim) error {
	rv := c.ResourceVersion
	err := s.writer.Delete(ctx, c, client.Preconditions{ResourceVersion: &rv})
	switch {
	case apierrors.IsConflict(err):
		s.forget(c.Name)
		return fmt.Errorf("ipclaim %s: %w", c.Name, ipalloc.ErrConflict)
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("delete ipclaim %s: %w", c.Name, err)
	}
	// The deletion's resourceVersion is unknown; shadow until the cache
	// drops the object (or the TTL passes).
	n, _ := strconv.ParseInt(rv, 10, 64)
	s.mu.Lock()
	s.sweep()
	s.set(c.Name, overlayEntry{uid: c.UID, rv: n + 1<<62, until: s.now().Add(overlayTTL)})
	s.mu.Unlock()
	return nil
}
