package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ClaimState is where an IPClaim is in its life.
// +kubebuilder:validation:Enum=Bound;Releasing;Reserved;Conflict
type ClaimState string

// Claim states.
const (
	// ClaimBound: a pod holds the address; only its CNI DEL (or the
	// controller, once the pod object is gone) ends that.
	ClaimBound ClaimState = "Bound"
	// ClaimReleasing: the pod asked for early release
	// (berth.io/ip-release: early) and is terminating; the agent on its node
	// is removing the address from the pod's interface. Not claimable yet.
	ClaimReleasing ClaimState = "Releasing"
	// ClaimReserved: no pod holds the address; it waits for a new pod of its
	// app until ReservedUntil.
	ClaimReserved ClaimState = "Reserved"
	// ClaimConflict: another host answered for the address on the pod's
	// link (berth-netcheck's duplicate-address check failed the pod's
	// ADD), so the address is out of use until ReservedUntil, when
	// berth-controller frees it. No pod gets it meanwhile, not even its
	// App's: the claim keeps Pod, App and Node only as the record of who
	// met the conflict.
	ClaimConflict ClaimState = "Conflict"
)

// AppKind is the kind of workload an address is retained for.
// +kubebuilder:validation:Enum=Deployment;StatefulSet;ReplicaSet;Group
type AppKind string

// App kinds.
const (
	AppDeployment  AppKind = "Deployment"
	AppStatefulSet AppKind = "StatefulSet"
	AppReplicaSet  AppKind = "ReplicaSet"
	// AppGroup is the annotation berth.io/ip-group: pods of any workloads in
	// one namespace that share a group share its reserve.
	AppGroup AppKind = "Group"
)

// App is the identity an address is retained for: the pod's top owner, or
// its berth.io/ip-group.
type App struct {
	// Kind of the app.
	// +required
	Kind AppKind `json:"kind"`
	// Namespace of the app (the pod's namespace).
	// +required
	Namespace string `json:"namespace"`
	// Name of the workload, or of the group.
	// +required
	Name string `json:"name"`
	// Ordinal is the StatefulSet ordinal the address belongs to: pod
	// "<name>-<ordinal>" gets it back.
	// +optional
	Ordinal *int32 `json:"ordinal,omitempty"`
}

// PodRef is the pod that holds (or last held) an address.
type PodRef struct {
	// Namespace of the pod.
	// +required
	Namespace string `json:"namespace"`
	// Name of the pod.
	// +required
	Name string `json:"name"`
	// UID of the pod.
	// +required
	UID types.UID `json:"uid"`
}

// IPClaimSpec is the record of one address: who holds it or whom it is
// reserved for. berth-agent writes it with optimistic concurrency; the claim
// object's name is the lock against two pods getting one address.
type IPClaimSpec struct {
	// Pool is the IPPool the address belongs to.
	// +required
	Pool string `json:"pool"`
	// Address is the IP address, without prefix length.
	// +required
	Address string `json:"address"`
	// App is the identity the address is retained for; empty when it is not
	// retained (the claim is deleted when its pod releases it).
	// +optional
	App *App `json:"app,omitempty"`
	// Pod holds the address (Bound, Releasing) or last held it (Reserved,
	// Conflict).
	// +required
	Pod PodRef `json:"pod"`
	// ContainerID is the pod sandbox's ID, as CNI gives it. Empty on a
	// Bound claim the agent prepared when the pod was scheduled, until the
	// pod's ADD took it (recorded right after the ADD answered).
	// +optional
	ContainerID string `json:"containerID,omitempty"`
	// Interface is the pod interface the address is on, as CNI gives it.
	// +optional
	Interface string `json:"interface,omitempty"`
	// Network is the CNI network (its configuration's name) whose ADD took
	// the address. CNI GC of a network releases only the claims that name
	// it, so a pod's addresses on other networks (a secondary macvlan
	// interface, say) are never taken by it. Empty until an ADD took the
	// claim, and on claims an older berth-ipam bound.
	// +optional
	Network string `json:"network,omitempty"`
	// Node the pod runs (or ran) on.
	// +optional
	Node string `json:"node,omitempty"`
	// State of the claim.
	// +required
	State ClaimState `json:"state"`
	// ReservedUntil is when a Reserved claim is freed unless its app takes
	// it back, and when a Conflict claim's quarantine ends and it is freed.
	// +optional
	ReservedUntil *metav1.Time `json:"reservedUntil,omitempty"`
}

// IPClaimStatus is what the controller observed about the claim.
type IPClaimStatus struct {
	// ObservedGeneration is the generation of the spec the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Orphaned (its pod or node is gone and the controller
	// reserved or freed it).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// IPClaim is one address of an IPPool in use or reserved. Its name is
// "<pool>-<address>" with dots and colons replaced by dashes (IPv6 written
// out in full), so the API server admits one claim per address.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ipclaim,categories=berth
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Pool",type=string,JSONPath=`.spec.pool`
// +kubebuilder:printcolumn:name="Address",type=string,JSONPath=`.spec.address`
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.spec.state`
// +kubebuilder:printcolumn:name="App",type=string,JSONPath=`.spec.app.name`
// +kubebuilder:printcolumn:name="Pod",type=string,JSONPath=`.spec.pod.name`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="Network",type=string,JSONPath=`.spec.network`,priority=1
// +kubebuilder:printcolumn:name="Reserved-Until",type=string,JSONPath=`.spec.reservedUntil`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:selectablefield:JSONPath=`.spec.address`
type IPClaim struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the claim's record.
	// +required
	Spec IPClaimSpec `json:"spec"`
	// Status is what the controller observed.
	// +optional
	Status IPClaimStatus `json:"status,omitempty"`
}

// IPClaimList is a list of IPClaims.
//
// +kubebuilder:object:root=true
type IPClaimList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPClaim `json:"items"`
}
