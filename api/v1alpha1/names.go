package v1alpha1

import (
	"net/netip"
	"strings"
)

// Annotations and labels of the user-facing contract.
const (
	// AnnotationPool on a pod names the IPPool(s) to take addresses from,
	// comma-separated (one per IP family for dual stack). On a namespace it
	// is the default for its pods.
	AnnotationPool = "berth.io/ippool"
	// AnnotationRetain "false" on a pod opts it out of retention: it gets a
	// fresh address, freed when it is deleted.
	AnnotationRetain = "berth.io/ip-retain"
	// AnnotationGroup on a pod names a group whose pods (in one namespace)
	// share a reserve, whatever their workload.
	AnnotationGroup = "berth.io/ip-group"
	// AnnotationRelease "early" on a pod releases its address when its
	// deletion starts rather than after its network is torn down; the pod
	// loses its network for its grace period.
	AnnotationRelease = "berth.io/ip-release"

	// LabelPool on an IPClaim is its pool.
	LabelPool = "berth.io/pool"
	// LabelNode on an IPClaim is its node.
	LabelNode = "berth.io/node"
	// LabelPodUID on an IPClaim is the UID of its pod.
	LabelPodUID = "berth.io/pod-uid"

	// FinalizerPoolInUse keeps an IPPool that is being deleted, and so its
	// addresses (no other pool may overlap them), until none of its claims
	// is Bound or Releasing. berth-controller adds it and removes it.
	FinalizerPoolInUse = "berth.io/pool-in-use"
)

// ClaimName is the name of the IPClaim of addr in pool: the pool's name, a
// dash, and the address with dots and colons replaced by dashes (IPv6 in
// its expanded form, so the name never ends with a dash).
func ClaimName(pool string, addr netip.Addr) string {
	var s string
	if addr.Is4() || addr.Is4In6() {
		s = strings.ReplaceAll(addr.Unmap().String(), ".", "-")
	} else {
		s = strings.ReplaceAll(addr.WithZone("").StringExpanded(), ":", "-")
	}
	return pool + "-" + s
}
