// Package v1alpha1 holds the berth.io/v1alpha1 API: IPPool and IPClaim, the
// retained-IP address management shared by berth-agent (which allocates) and
// berth-controller (which collects garbage).
//
// +kubebuilder:object:generate=true
// +groupName=berth.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the group and version of these types.
var GroupVersion = schema.GroupVersion{Group: "berth.io", Version: "v1alpha1"}

var (
	// SchemeBuilder registers the types of this package.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds the types of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &IPPool{}, &IPPoolList{}, &IPClaim{}, &IPClaimList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
