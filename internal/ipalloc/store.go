// Package ipalloc is Berth's address allocator: pure logic over a small Store
// of IPPools, IPClaims, pods and their owners. An address is taken by
// creating its IPClaim (the name, "<pool>-<address>", is the lock within a
// pool; across pools, a read of the address's claims from the API server
// after the create, see fresh) or by updating a Reserved claim at the
// resourceVersion read (optimistic concurrency): one of the pod's app or,
// when the pool has no free address left, one of another app.
// Nothing else in this package is shared state, so any number of
// allocators on any number of nodes may run at once.
package ipalloc

import (
	"context"
	"errors"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/api/v1alpha1"
)

// Store errors; implementations return them (wrapped or not).
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrConflict = errors.New("modified concurrently")
)

// Store is what the allocator reads and writes. Reads may lag behind the
// API server (an informer cache) but must show the store's own writes;
// writes are checked by the API server: Create fails with ErrExists when
// the name is taken, Update and Delete with ErrConflict when the object's
// resourceVersion is stale. Objects returned are shared: never modify them.
type Store interface {
	Pool(name string) (*v1alpha1.IPPool, error)
	Pools() ([]*v1alpha1.IPPool, error)
	Namespace(name string) (*corev1.Namespace, error)
	Pod(namespace, name string) (*corev1.Pod, error)
	ReplicaSet(namespace, name string) (*appsv1.ReplicaSet, error)

	Claim(name string) (*v1alpha1.IPClaim, error)
	// ClaimsOfApp lists the claims of pool retained for app (any ordinal).
	ClaimsOfApp(pool string, app v1alpha1.App) ([]*v1alpha1.IPClaim, error)
	// ClaimsOfContainer lists the claims whose spec.containerID is id.
	ClaimsOfContainer(id string) ([]*v1alpha1.IPClaim, error)
	// ClaimsOfPod lists the claims whose spec.pod.uid is uid.
	ClaimsOfPod(uid types.UID) ([]*v1alpha1.IPClaim, error)
	// ClaimsOfNode lists the claims whose spec.node is node.
	ClaimsOfNode(node string) ([]*v1alpha1.IPClaim, error)
	// ClaimsOfAddress lists the claims whose spec.address is addr (as
	// netip.Addr.String writes it), in any pool.
	ClaimsOfAddress(addr string) ([]*v1alpha1.IPClaim, error)
	// ReservedClaims lists the claims of pool in state Reserved (any app).
	ReservedClaims(pool string) ([]*v1alpha1.IPClaim, error)
	// LiveClaimsOfAddress is ClaimsOfAddress read from the API server, not
	// a cache, within a deadline, as of resourceVersion rv or later (the
	// caller's own write: every write the API server committed before it
	// shows; "": as of now). The allocator reads it once after each claim
	// it creates (the lock across pools, see soleClaim).
	LiveClaimsOfAddress(ctx context.Context, addr, rv string) ([]*v1alpha1.IPClaim, error)

	Create(ctx context.Context, c *v1alpha1.IPClaim) error
	Update(ctx context.Context, c *v1alpha1.IPClaim) error
	// Delete deletes c if its resourceVersion is current; a claim already
	// gone is not an error.
	Delete(ctx context.Context, c *v1alpha1.IPClaim) error
}

// AppKey is the index key of an app (ordinal ignored), for stores.
func AppKey(pool string, app v1alpha1.App) string {
	return pool + "/" + string(app.Kind) + "/" + app.Namespace + "/" + app.Name
}
