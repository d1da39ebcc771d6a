package ipalloc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berth-io/berth/api/v1alpha1"
)

// ErrNotHeld is returned by Quarantine when the container holds no claim
// of the address on the interface.
var ErrNotHeld = errors.New("no claim of the container holds the address")

// Quarantine takes addr out of use after another host answered for it on
// the link of the container's interface ifName (berth-netcheck's
// duplicate-address check failed the ADD): the container's Bound claim
// of addr goes to state Conflict until until, recording no container, so
// the DEL that follows the failed ADD neither frees it nor reserves it
// for the app, and the pod's next ADD gets another address (from its
// app's other reservations, or a fresh one; a StatefulSet ordinal gets a
// fresh one, retained for it from then on). berth-controller frees the
// claim at until. It returns the claim as written and whether this call
// wrote it: a claim of addr on this node and interface already in
// Conflict is a repeated report, returned unchanged. A container that
// holds no claim of addr on ifName is ErrNotHeld.
func (a *Allocator) Quarantine(ctx context.Context, containerID, ifName string, addr netip.Addr, until time.Time) (*v1alpha1.IPClaim, bool, error) {
	addr = addr.Unmap()
	for attempt := 0; attempt < a.cfg.MaxConflicts; attempt++ {
		claims, err := a.cfg.Store.ClaimsOfContainer(containerID)
		if err != nil {
			return nil, false, fmt.Errorf("container %s: claims: %w", containerID, err)
		}
		var c *v1alpha1.IPClaim
		for _, cl := range claims {
			if cl.Spec.Interface == ifName && cl.Spec.State == v1alpha1.ClaimBound && sameAddr(cl.Spec.Address, addr) {
				c = cl
				break
			}
		}
		if c == nil {
			return a.quarantined(containerID, ifName, addr)
		}
		c = c.DeepCopy()
		c.Spec.State = v1alpha1.ClaimConflict
		c.Spec.ContainerID = ""
		t := metav1.NewTime(until)
		c.Spec.ReservedUntil = &t
		err = a.cfg.Store.Update(ctx, c)
		if errors.Is(err, ErrConflict) {
			continue // changed since the cache read it: look again
		}
		if err != nil {
			return nil, false, fmt.Errorf("claim %s: quarantine: %w", c.Name, err)
		}
		return c, true, nil
	}
	return nil, false, fmt.Errorf("container %s: quarantine %s: %w", containerID, addr, ErrTooManyRetries)
}

// quarantined finds the claim of a repeated report: addr in Conflict on
// this node and interface.
func (a *Allocator) quarantined(containerID, ifName string, addr netip.Addr) (*v1alpha1.IPClaim, bool, error) {
	others, err := a.cfg.Store.ClaimsOfAddress(addr.String())
	if err != nil {
		return nil, false, fmt.Errorf("claims of %s: %w", addr, err)
	}
	for _, o := range others {
		if o.Spec.State == v1alpha1.ClaimConflict && o.Spec.Node == a.cfg.Node && o.Spec.Interface == ifName {
			return o, false, nil
		}
	}
	return nil, false, fmt.Errorf("container %s interface %s, address %s: %w", containerID, ifName, addr, ErrNotHeld)
}

func sameAddr(s string, addr netip.Addr) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Unmap() == addr
}
