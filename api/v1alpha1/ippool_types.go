package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DefaultReservationTTL is how long a released address stays reserved for
// its app when IPPoolSpec.ReservationTTL is not set.
const DefaultReservationTTL = 24 * time.Hour

// Route is a route a pod gets with an address of the pool.
type Route struct {
	// Destination in CIDR notation, e.g. "0.0.0.0/0" or "10.0.0.0/8".
	// +required
	Destination string `json:"destination"`
	// Gateway of the route; empty means the pool's gateway.
	// +optional
	Gateway string `json:"gateway,omitempty"`
}

// IPPoolSpec says which addresses a pool hands out, to which pods, and how
// long a released address stays with its app.
type IPPoolSpec struct {
	// CIDR is the subnet of the pool, IPv4 ("10.244.0.0/24") or IPv6
	// ("fd00:10:244::/64"). Pods get addresses of it with its prefix length.
	// Immutable: claims are named by address, so changing the subnet would
	// orphan them.
	// +required
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="cidr is immutable"
	CIDR string `json:"cidr"`
	// Gateway is the pods' default gateway; it is never handed out.
	// Default: none (no default route is returned unless Routes has one).
	// +optional
	Gateway string `json:"gateway,omitempty"`
	// Routes the pods get. A route without a gateway uses Gateway.
	// +optional
	// +listType=atomic
	Routes []Route `json:"routes,omitempty"`
	// IncludeRanges, when set, limits the addresses handed out to these
	// ranges inside CIDR: each is a CIDR ("10.244.0.64/26") or a range of two
	// addresses joined by a dash ("10.244.0.10-10.244.0.99"). Default: all of
	// CIDR except its network address and (IPv4) its broadcast address.
	// +optional
	// +listType=atomic
	IncludeRanges []string `json:"includeRanges,omitempty"`
	// ExcludeRanges are never handed out, in the same syntax as
	// IncludeRanges.
	// +optional
	// +listType=atomic
	ExcludeRanges []string `json:"excludeRanges,omitempty"`
	// NamespaceSelector limits the pool to pods in namespaces whose labels
	// match. Default: every namespace.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	// PodSelector limits the pool to pods whose labels match. Default: every
	// pod.
	// +optional
	PodSelector *metav1.LabelSelector `json:"podSelector,omitempty"`
	// Retain keeps a released address reserved for its pod's app
	// (Deployment, StatefulSet, or berth.io/ip-group), so the app's next pod
	// gets it back. Default true. A pod opts out with the annotation
	// berth.io/ip-retain: "false".
	// +optional
	// +kubebuilder:default=true
	Retain *bool `json:"retain,omitempty"`
	// ReservationTTL is how long a released address stays reserved for its
	// app before the controller frees it. Default 24h.
	// +optional
	// +kubebuilder:default="24h"
	ReservationTTL *metav1.Duration `json:"reservationTTL,omitempty"`
	// ReclaimReservations lets a pod take over a reservation when no free
	// address is left: a fresh allocation then gets the Reserved address of
	// another app whose reservation ends soonest (that app's next pod gets
	// another address). An address that a pod holds (Bound or Releasing) is
	// never taken, nor a reservation of the pod's own app. With false, the
	// pod fails as exhausted until reservations expire (ReservationTTL) or
	// are freed. Default true.
	// +optional
	// +kubebuilder:default=true
	ReclaimReservations *bool `json:"reclaimReservations,omitempty"`
}

// IPPoolStatus is the pool as berth-controller last counted it.
type IPPoolStatus struct {
	// ObservedGeneration is the generation of the spec the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Size is the number of addresses the pool can hand out.
	// +optional
	Size int64 `json:"size"`
	// Bound is the number of addresses held by pods.
	// +optional
	Bound int64 `json:"bound"`
	// Reserved is the number of addresses reserved for apps whose pods are
	// gone (or releasing).
	// +optional
	Reserved int64 `json:"reserved"`
	// Conflict is the number of addresses out of use because another host
	// answered for them when a pod got them (claims in state Conflict, see
	// IPClaim); each returns when its quarantine ends.
	// +optional
	Conflict int64 `json:"conflict"`
	// Free is Size - Bound - Reserved - Conflict.
	// +optional
	Free int64 `json:"free"`
	// Conditions: Ready (the spec is valid and the pool can hand out
	// addresses; False with reason InvalidSpec, or Overlaps when an older
	// pool hands out some of the same addresses, which berth-ipam then
	// refuses to hand out from this pool), Exhausted (no free address is
	// left).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// IPPool is a range of addresses that berth-ipam hands out to pods, keeping
// each released address for its app (see IPClaim).
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ippool,categories=berth
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="CIDR",type=string,JSONPath=`.spec.cidr`
// +kubebuilder:printcolumn:name="Gateway",type=string,JSONPath=`.spec.gateway`
// +kubebuilder:printcolumn:name="Retain",type=boolean,JSONPath=`.spec.retain`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.size`
// +kubebuilder:printcolumn:name="Bound",type=integer,JSONPath=`.status.bound`
// +kubebuilder:printcolumn:name="Reserved",type=integer,JSONPath=`.status.reserved`
// +kubebuilder:printcolumn:name="Free",type=integer,JSONPath=`.status.free`
// +kubebuilder:printcolumn:name="Conflict",type=integer,JSONPath=`.status.conflict`,priority=1
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type IPPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the pool's addresses and rules.
	// +required
	Spec IPPoolSpec `json:"spec"`
	// Status is the pool as the controller last counted it.
	// +optional
	Status IPPoolStatus `json:"status,omitempty"`
}

// IPPoolList is a list of IPPools.
//
// +kubebuilder:object:root=true
type IPPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPPool `json:"items"`
}
