package v1alpha1

import (
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DefaultReservationTTL is how long a released address stays reserved for
// its app when IPPoolSpec.ReservationTTL is not set.
const DefaultReservationTTL = 24 * time.Hour

// ParseReservationTTL returns the spec's ReservationTTL as a duration:
// DefaultReservationTTL when it is empty, an error that says what to write
// when it is not a positive duration of Go's syntax.
func (s *IPPoolSpec) ParseReservationTTL() (time.Duration, error) {
	if s.ReservationTTL == "" {
		return DefaultReservationTTL, nil
	}
	d, err := time.ParseDuration(s.ReservationTTL)
	if err != nil {
		return 0, fmt.Errorf("reservationTTL %q: %w (want a positive duration such as 24h, 90m or 1h30m; 7 days is 168h)", s.ReservationTTL, err)
	}
	if d <= 0 {
		return 0, fmt.Errorf("reservationTTL %q: %w", s.ReservationTTL, errNotPositive)
	}
	return d, nil
}

var errNotPositive = errors.New("want a positive duration")

// Route is a route a pod gets with an address of the pool.
//
// +kubebuilder:validation:XValidation:rule="isCIDR(self.destination)",messageExpression="'route destination ' + self.destination + ': want a CIDR, e.g. 0.0.0.0/0 or 10.0.0.0/8'"
// +kubebuilder:validation:XValidation:rule="!has(self.gateway) || size(self.gateway) == 0 || isIP(self.gateway)",messageExpression="'route gateway ' + self.gateway + ': want an IP address, e.g. 10.244.0.1'"
type Route struct {
	// Destination in CIDR notation, e.g. "0.0.0.0/0" or "10.0.0.0/8".
	// +required
	// +kubebuilder:validation:MaxLength=64
	Destination string `json:"destination"`
	// Gateway of the route; empty means the pool's gateway.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Gateway string `json:"gateway,omitempty"`
}

// IPPoolSpec says which addresses a pool hands out, to which pods, and how
// long a released address stays with its app.
//
// The API server checks the addresses' syntax and that they lie inside
// cidr (the rules below); that a pool's addresses do not overlap another
// pool's is checked by the ValidatingAdmissionPolicy berth-ippool-overlap
// (deploy/base/admission). berth-ipam checks all again (internal/ipalloc
// ParsePool): a pool admitted before a rule existed is refused with
// Ready=False/InvalidSpec, never a failed list.
//
// +kubebuilder:validation:XValidation:rule="!has(self.gateway) || size(self.gateway) == 0 || isIP(self.gateway)",messageExpression="'gateway ' + self.gateway + ': want an IP address, e.g. 10.244.0.1 or fd00:10:244::1'"
// +kubebuilder:validation:XValidation:rule="!has(self.gateway) || !isIP(self.gateway) || !isCIDR(self.cidr) || cidr(self.cidr).containsIP(self.gateway)",messageExpression="'gateway ' + self.gateway + ' is not inside cidr ' + self.cidr + ' (or not of its IP family)'"
// +kubebuilder:validation:XValidation:rule="!has(self.routes) || !isCIDR(self.cidr) || self.routes.all(r, !isCIDR(r.destination) || cidr(r.destination).ip().family() == cidr(self.cidr).ip().family())",messageExpression="'routes: each destination must be of the IP family of cidr ' + self.cidr"
// +kubebuilder:validation:XValidation:rule="!has(self.includeRanges) || !isCIDR(self.cidr) || self.includeRanges.all(r, (r.contains('/') ? !isCIDR(r) || cidr(self.cidr).containsCIDR(r) : (!isIP(r.split('-')[0].trim()) || cidr(self.cidr).containsIP(r.split('-')[0].trim())) && (!r.contains('-') || !isIP(r.split('-')[1].trim()) || cidr(self.cidr).containsIP(r.split('-')[1].trim()))))",messageExpression="'includeRanges: each entry must lie inside cidr ' + self.cidr + ' and be of its IP family'"
// +kubebuilder:validation:XValidation:rule="!has(self.excludeRanges) || !isCIDR(self.cidr) || self.excludeRanges.all(r, (r.contains('/') ? !isCIDR(r) || cidr(self.cidr).containsCIDR(r) : (!isIP(r.split('-')[0].trim()) || cidr(self.cidr).containsIP(r.split('-')[0].trim())) && (!r.contains('-') || !isIP(r.split('-')[1].trim()) || cidr(self.cidr).containsIP(r.split('-')[1].trim()))))",messageExpression="'excludeRanges: each entry must lie inside cidr ' + self.cidr + ' and be of its IP family'"
type IPPoolSpec struct {
	// CIDR is the subnet of the pool, IPv4 ("10.244.0.0/24") or IPv6
	// ("fd00:10:244::/64"). Pods get addresses of it with its prefix length.
	// Immutable: claims are named by address, so changing the subnet would
	// orphan them.
	// +required
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="cidr is immutable"
	// +kubebuilder:validation:XValidation:rule="isCIDR(self)",messageExpression="'cidr ' + self + ': want a subnet in CIDR notation, e.g. 10.244.0.0/24 or fd00:10:244::/64'"
	// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || cidr(self) == cidr(self).masked()",messageExpression="'cidr ' + self + ': bits are set after the prefix length; write the network address (10.244.0.0/24, not 10.244.0.5/24)'"
	CIDR string `json:"cidr"`
	// Gateway is the pods' default gateway, an address inside CIDR; it is
	// never handed out. Default: none (no default route is returned unless
	// Routes has one).
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Gateway string `json:"gateway,omitempty"`
	// Routes the pods get. A route without a gateway uses Gateway.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Routes []Route `json:"routes,omitempty"`
	// IncludeRanges, when set, limits the addresses handed out to these
	// ranges inside CIDR: each is a CIDR ("10.244.0.64/26") or a range of two
	// addresses joined by a dash ("10.244.0.10-10.244.0.99"), the lower
	// first. Default: all of CIDR except its network address and (IPv4) its
	// broadcast address.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=81
	// +kubebuilder:validation:items:XValidation:rule="self.contains('/') ? isCIDR(self) : self.contains('-') ? size(self.split('-')) == 2 && isIP(self.split('-')[0].trim()) && isIP(self.split('-')[1].trim()) : isIP(self)",messageExpression="'includeRanges entry ' + self + ': want a CIDR (10.244.0.64/26), an address (10.244.0.9), or two addresses joined by a dash (10.244.0.10-10.244.0.99)'"
	// +kubebuilder:validation:items:XValidation:rule="!self.contains('-') || self.contains('/') || size(self.split('-')) != 2 || !isIP(self.substring(0, self.indexOf('-')).trim()) || !isIP(self.substring(self.indexOf('-') + 1).trim()) || ip(self.substring(0, self.indexOf('-')).trim()).family() != ip(self.substring(self.indexOf('-') + 1).trim()).family() || ip(self.substring(0, self.indexOf('-')).trim()) == ip(self.substring(self.indexOf('-') + 1).trim()) || ['/0 /1', '/1 /2', '/2 /3', '/3 /4', '/4 /5', '/5 /6', '/6 /7', '/7 /8', '/8 /9', '/9 /10', '/10 /11', '/11 /12', '/12 /13', '/13 /14', '/14 /15', '/15 /16', '/16 /17', '/17 /18', '/18 /19', '/19 /20', '/20 /21', '/21 /22', '/22 /23', '/23 /24', '/24 /25', '/25 /26', '/26 /27', '/27 /28', '/28 /29', '/29 /30', '/30 /31', '/31 /32', '/32 /33', '/33 /34', '/34 /35', '/35 /36', '/36 /37', '/37 /38', '/38 /39', '/39 /40', '/40 /41', '/41 /42', '/42 /43', '/43 /44', '/44 /45', '/45 /46', '/46 /47', '/47 /48', '/48 /49', '/49 /50', '/50 /51', '/51 /52', '/52 /53', '/53 /54', '/54 /55', '/55 /56', '/56 /57', '/57 /58', '/58 /59', '/59 /60', '/60 /61', '/61 /62', '/62 /63', '/63 /64', '/64 /65', '/65 /66', '/66 /67', '/67 /68', '/68 /69', '/69 /70', '/70 /71', '/71 /72', '/72 /73', '/73 /74', '/74 /75', '/75 /76', '/76 /77', '/77 /78', '/78 /79', '/79 /80', '/80 /81', '/81 /82', '/82 /83', '/83 /84', '/84 /85', '/85 /86', '/86 /87', '/87 /88', '/88 /89', '/89 /90', '/90 /91', '/91 /92', '/92 /93', '/93 /94', '/94 /95', '/95 /96', '/96 /97', '/97 /98', '/98 /99', '/99 /100', '/100 /101', '/101 /102', '/102 /103', '/103 /104', '/104 /105', '/105 /106', '/106 /107', '/107 /108', '/108 /109', '/109 /110', '/110 /111', '/111 /112', '/112 /113', '/113 /114', '/114 /115', '/115 /116', '/116 /117', '/117 /118', '/118 /119', '/119 /120', '/120 /121', '/121 /122', '/122 /123', '/123 /124', '/124 /125', '/125 /126', '/126 /127', '/127 /128'].exists(q, isCIDR(self.substring(0, self.indexOf('-')).trim() + q.substring(q.indexOf(' ') + 1)) && cidr(self.substring(0, self.indexOf('-')).trim() + q.substring(0, q.indexOf(' '))).containsIP(self.substring(self.indexOf('-') + 1).trim()) && !cidr(self.substring(0, self.indexOf('-')).trim() + q.substring(q.indexOf(' ') + 1)).containsIP(self.substring(self.indexOf('-') + 1).trim()) && cidr(self.substring(0, self.indexOf('-')).trim() + q.substring(q.indexOf(' ') + 1)).masked().ip() == cidr(self.substring(0, self.indexOf('-')).trim() + q.substring(0, q.indexOf(' '))).masked().ip())",messageExpression="'includeRanges entry ' + self + ': the range ends before it starts; write the lower address first'"
	IncludeRanges []string `json:"includeRanges,omitempty"`
	// ExcludeRanges are never handed out, in the same syntax as
	// IncludeRanges.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=81
	// +kubebuilder:validation:items:XValidation:rule="self.contains('/') ? isCIDR(self) : self.contains('-') ? size(self.split('-')) == 2 && isIP(self.split('-')[0].trim()) && isIP(self.split('-')[1].trim()) : isIP(self)",messageExpression="'excludeRanges entry ' + self + ': want a CIDR (10.244.0.64/26), an address (10.244.0.9), or two addresses joined by a dash (10.244.0.10-10.244.0.99)'"
	// +kubebuilder:validation:items:XValidation:rule="!self.contains('-') || self.contains('/') || size(self.split('-')) != 2 || !isIP(self.substring(0, self.indexOf('-')).trim()) || !isIP(self.substring(self.indexOf('-') + 1).trim()) || ip(self.substring(0, self.indexOf('-')).trim()).family() != ip(self.substring(self.indexOf('-') + 1).trim()).family() || ip(self.substring(0, self.indexOf('-')).trim()) == ip(self.substring(self.indexOf('-') + 1).trim()) || ['/0 /1', '/1 /2', '/2 /3', '/3 /4', '/4 /5', '/5 /6', '/6 /7', '/7 /8', '/8 /9', '/9 /10', '/10 /11', '/11 /12', '/12 /13', '/13 /14', '/14 /15', '/15 /16', '/16 /17', '/17 /18', '/18 /19', '/19 /20', '/20 /21', '/21 /22', '/22 /23', '/23 /24', '/24 /25', '/25 /26', '/26 /27', '/27 /28', '/28 /29', '/29 /30', '/30 /31', '/31 /32', '/32 /33', '/33 /34', '/34 /35', '/35 /36', '/36 /37', '/37 /38', '/38 /39', '/39 /40', '/40 /41', '/41 /42', '/42 /43', '/43 /44', '/44 /45', '/45 /46', '/46 /47', '/47 /48', '/48 /49', '/49 /50', '/50 /51', '/51 /52', '/52 /53', '/53 /54', '/54 /55', '/55 /56', '/56 /57', '/57 /58', '/58 /59', '/59 /60', '/60 /61', '/61 /62', '/62 /63', '/63 /64', '/64 /65', '/65 /66', '/66 /67', '/67 /68', '/68 /69', '/69 /70', '/70 /71', '/71 /72', '/72 /73', '/73 /74', '/74 /75', '/75 /76', '/76 /77', '/77 /78', '/78 /79', '/79 /80', '/80 /81', '/81 /82', '/82 /83', '/83 /84', '/84 /85', '/85 /86', '/86 /87', '/87 /88', '/88 /89', '/89 /90', '/90 /91', '/91 /92', '/92 /93', '/93 /94', '/94 /95', '/95 /96', '/96 /97', '/97 /98', '/98 /99', '/99 /100', '/100 /101', '/101 /102', '/102 /103', '/103 /104', '/104 /105', '/105 /106', '/106 /107', '/107 /108', '/108 /109', '/109 /110', '/110 /111', '/111 /112', '/112 /113', '/113 /114', '/114 /115', '/115 /116', '/116 /117', '/117 /118', '/118 /119', '/119 /120', '/120 /121', '/121 /122', '/122 /123', '/123 /124', '/124 /125', '/125 /126', '/126 /127', '/127 /128'].exists(q, isCIDR(self.substring(0, self.indexOf('-')).trim() + q.substring(q.indexOf(' ') + 1)) && cidr(self.substring(0, self.indexOf('-')).trim() + q.substring(0, q.indexOf(' '))).containsIP(self.substring(self.indexOf('-') + 1).trim()) && !cidr(self.substring(0, self.indexOf('-')).trim() + q.substring(q.indexOf(' ') + 1)).containsIP(self.substring(self.indexOf('-') + 1).trim()) && cidr(self.substring(0, self.indexOf('-')).trim() + q.substring(q.indexOf(' ') + 1)).masked().ip() == cidr(self.substring(0, self.indexOf('-')).trim() + q.substring(0, q.indexOf(' '))).masked().ip())",messageExpression="'excludeRanges entry ' + self + ': the range ends before it starts; write the lower address first'"
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
	// app before the controller frees it: a positive duration in Go's syntax
	// ("24h", "90m", "1h30m"; units h, m, s, ms, us, ns, no days). Default
	// 24h. A string, parsed where it is used (ParseReservationTTL), so that
	// a value stored before the API server checked it makes the pool invalid
	// (Ready=False, InvalidSpec) rather than every list of pools fail.
	// +optional
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(h|m|s|ms|us|ns))+$') && duration(self) > duration('0s')",messageExpression="'reservationTTL ' + self + ': want a positive duration of Go, a number and a unit (h, m, s, ms, us, ns) such as 24h, 90m or 1h30m; days are not a unit (7 days: 168h)'"
	ReservationTTL string `json:"reservationTTL,omitempty"`
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
