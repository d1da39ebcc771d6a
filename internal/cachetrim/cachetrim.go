// Package cachetrim trims the objects berth-agent and berth-controller
// cache to what they read. Both cache every pod and ReplicaSet of the
// cluster (the controller also Deployments, StatefulSets and Nodes), so a
// whole object per pod would bound the cluster size their memory limits
// allow. An object trimmed beyond its managedFields (pods, ReplicaSets,
// Deployments, StatefulSets, Nodes) must never be written back; Berth
// writes none of them. Claims and pools lose only their managedFields and
// are updated from the cache: an update without managedFields keeps the
// stored ones, and Berth's claim updates reset them.
package cachetrim

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// LastApplied is the annotation kubectl apply leaves: the whole object
// again, as JSON.
const LastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// Options returns o trimming what Berth caches:
//   - every object loses its managedFields;
//   - a pod keeps its metadata, node, host network, phase and IPs (Pod);
//   - a ReplicaSet, Deployment, StatefulSet or Node keeps its metadata
//     (Berth asks only whether it exists, and a ReplicaSet's owner);
//   - none keeps kubectl's last-applied annotation.
//
// A type Berth does not cache costs nothing here: informers start on first
// use.
func Options(o cache.Options) cache.Options {
	o.DefaultTransform = cache.TransformStripManagedFields()
	if o.ByObject == nil {
		o.ByObject = map[client.Object]cache.ByObject{}
	}
	o.ByObject[&corev1.Pod{}] = cache.ByObject{Transform: Pod}
	o.ByObject[&corev1.Node{}] = cache.ByObject{Transform: metadataOnly[corev1.Node]}
	o.ByObject[&appsv1.ReplicaSet{}] = cache.ByObject{Transform: metadataOnly[appsv1.ReplicaSet]}
	o.ByObject[&appsv1.Deployment{}] = cache.ByObject{Transform: metadataOnly[appsv1.Deployment]}
	o.ByObject[&appsv1.StatefulSet{}] = cache.ByObject{Transform: metadataOnly[appsv1.StatefulSet]}
	return o
}

// Meta is m without managedFields and kubectl's last-applied annotation
// (the annotations are copied, not changed).
func Meta(m metav1.ObjectMeta) metav1.ObjectMeta {
	m.ManagedFields = nil
	if _, ok := m.Annotations[LastApplied]; ok {
		a := make(map[string]string, len(m.Annotations)-1)
		for k, v := range m.Annotations {
			if k != LastApplied {
				a[k] = v
			}
		}
		m.Annotations = a
	}
	return m
}

// Pod keeps what berth-agent's IPAM (the allocator, the preparation of
// scheduled pods, early release) and berth-controller's claim GC read of
// a pod: its metadata, spec.nodeName, spec.hostNetwork, status.phase and
// its IPs. Anything else (a tombstone) passes unchanged.
func Pod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{TypeMeta: p.TypeMeta, ObjectMeta: Meta(p.ObjectMeta),
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs}}, nil
}

// metadataOnly keeps the type and the metadata (Meta) of a *T; anything
// else (a tombstone) passes unchanged.
func metadataOnly[T any, P interface {
	*T
	client.Object
	metav1.ObjectMetaAccessor
}](obj any) (any, error) {
	o, ok := obj.(P)
	if !ok {
		return obj, nil
	}
	out := P(new(T))
	out.GetObjectKind().SetGroupVersionKind(o.GetObjectKind().GroupVersionKind())
	from, ok1 := o.GetObjectMeta().(*metav1.ObjectMeta)
	to, ok2 := out.GetObjectMeta().(*metav1.ObjectMeta)
	if !ok1 || !ok2 {
		return obj, nil
	}
	*to = Meta(*from)
	return out, nil
}
