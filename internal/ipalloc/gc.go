package ipalloc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/api/v1alpha1"
)

// Defaults of GCRequest.
const (
	// DefaultGCMaxShare is the share of a node's held claims one GC may
	// release at once.
	DefaultGCMaxShare = 0.5
	// DefaultGCMinRefuse is the number of releases a GC may always make,
	// whatever the share: a node with few pods loses them all legitimately.
	DefaultGCMinRefuse = 4
)

// ErrGCRefused is returned (in a *GCRefusedError) when a GC would release
// more of a node's claims at once than GCRequest allows: a truncated or
// empty list from the runtime (or a runtime that lost its state) would
// otherwise free addresses that pods still use.
var ErrGCRefused = errors.New("garbage collection refused")

// GCRefusedError says how many claims a refused GC would have released.
type GCRefusedError struct {
	Would, Held, Max int
}

func (e *GCRefusedError) Error() string {
	return fmt.Sprintf("%s: it would release %d of the node's %d held claims at once (at most %d allowed); "+
		"the runtime's list of sandboxes looks truncated: nothing was released", ErrGCRefused, e.Would, e.Held, e.Max)
}

func (e *GCRefusedError) Unwrap() error { return ErrGCRefused }

// GCRequest is one garbage collection of a node's claims against what the
// runtime still has.
type GCRequest struct {
	// AllNetworks considers the claims of every network (the runtime's
	// whole list of sandboxes); otherwise only those of Network (CNI GC of
	// that network: claims of other networks, and those that name none
	// unless Network is empty too, are not its to judge).
	AllNetworks bool
	Network     string
	// Valid says whether the runtime still has the claim's attachment.
	// Prepared claims (no container ID yet) are passed only with
	// AllNetworks: the runtime's list then tells whether any sandbox of the
	// claim's pod exists. A prepared claim whose pod still exists and has
	// not ended is kept whatever Valid says (the preparer looks after it).
	Valid func(*v1alpha1.IPClaim) bool
	// Keep says to keep the claims of a container whatever the list says
	// (an ADD or a release in flight).
	Keep func(containerID string) bool
	// MaxShare and MinRefuse bound one GC: it releases nothing when it
	// would release more than max(MinRefuse, MaxShare × the node's held
	// claims it considers). Defaults DefaultGCMaxShare, DefaultGCMinRefuse.
	MaxShare  float64
	MinRefuse int
}

// GCResult is what a GC did.
type GCResult struct {
	// Released are the claims released, as they were.
	Released []*v1alpha1.IPClaim
	// KeptLive are claims missing from the runtime's list that were kept
	// because their pod still exists, runs and reports the address.
	KeptLive []*v1alpha1.IPClaim
}

// GC releases this node's held claims that the runtime no longer has (see
// GCRequest). Before releasing a claim it checks the claim's pod: one that
// still exists (same UID), has not ended and lists the address in
// status.podIPs keeps it, whatever the runtime's list says. A GC that
// would release more than the request allows releases nothing and returns
// a *GCRefusedError. A Releasing claim is early release's, never GC's.
func (a *Allocator) GC(ctx context.Context, req GCRequest) (GCResult, error) {
	if req.MaxShare <= 0 {
		req.MaxShare = DefaultGCMaxShare
	}
	if req.MinRefuse <= 0 {
		req.MinRefuse = DefaultGCMinRefuse
	}
	claims, err := a.cfg.Store.ClaimsOfNode(a.cfg.Node)
	if err != nil {
		return GCResult{}, fmt.Errorf("claims of node %s: %w", a.cfg.Node, err)
	}
	var res GCResult
	var held int
	var gone []*v1alpha1.IPClaim
	for _, c := range claims {
		if c.Spec.State != v1alpha1.ClaimBound || (!req.AllNetworks && c.Spec.Network != req.Network) {
			continue
		}
		if c.Spec.ContainerID == "" && !req.AllNetworks {
			continue // prepared: no runtime's list of one network judges it
		}
		held++
		if req.Valid(c) || (c.Spec.ContainerID != "" && req.Keep(c.Spec.ContainerID)) {
			continue
		}
		if c.Spec.ContainerID == "" {
			if _, ok := a.claimPod(c); ok {
				continue // a prepared claim of a live pod: the preparer's
			}
		}
		if a.podUses(c) {
			res.KeptLive = append(res.KeptLive, c)
			continue
		}
		gone = append(gone, c)
	}
	if limit := max(req.MinRefuse, int(math.Floor(req.MaxShare*float64(held)))); len(gone) > limit {
		return res, &GCRefusedError{Would: len(gone), Held: held, Max: limit}
	}
	var errs []error
	for _, c := range gone {
		holds := heldBy(c.Spec.ContainerID)
		if c.Spec.ContainerID == "" {
			holds = preparedFor(c.Spec.Pod.UID)
		}
		done, err := a.releaseIf(ctx, c.Name, holds)
		if err != nil {
			errs = append(errs, err)
		} else if done {
			res.Released = append(res.Released, c)
		}
	}
	return res, errors.Join(errs...)
}

// podUses reports whether the claim's pod exists, has not ended and
// reports the claim's address among its IPs: its network is in use
// (kubelet has seen it), whatever a runtime's list says.
func (a *Allocator) podUses(c *v1alpha1.IPClaim) bool {
	p, ok := a.claimPod(c)
	if !ok {
		return false
	}
	addr, err := netip.ParseAddr(c.Spec.Address)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(p.Status.PodIPs, func(ip corev1.PodIP) bool {
		got, err := netip.ParseAddr(ip.IP)
		return err == nil && got.Unmap() == addr.Unmap()
	})
}

// claimPod returns the claim's pod if it exists (the same UID) and has
// not ended.
func (a *Allocator) claimPod(c *v1alpha1.IPClaim) (*corev1.Pod, bool) {
	p, err := a.cfg.Store.Pod(c.Spec.Pod.Namespace, c.Spec.Pod.Name)
	if err != nil || p.UID != c.Spec.Pod.UID || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil, false
	}
	return p, true
}

// preparedFor says whether a claim is still prepared for the pod uid (no
// container recorded on it).
func preparedFor(uid types.UID) func(*v1alpha1.IPClaim) bool {
	return func(c *v1alpha1.IPClaim) bool { return c.Spec.ContainerID == "" && c.Spec.Pod.UID == uid }
}
