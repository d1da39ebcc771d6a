package ipamserver

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// lastApplied is the annotation kubectl apply leaves: the whole object
// again, as JSON.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// CacheOptions returns o with what the IPAM server's informer cache keeps
// of each object. The agent on every node caches every pod and ReplicaSet
// of the cluster (an app's pods and a pod's owner may be anywhere), so it
// keeps only what the allocator reads: a pod's metadata, node, host
// network, phase and IPs; a ReplicaSet's metadata (its owner). Every
// object loses its managedFields and kubectl's last-applied annotation.
// Nothing read from this cache is written back.
func CacheOptions(o cache.Options) cache.Options {
	o.DefaultTransform = cache.TransformStripManagedFields()
	if o.ByObject == nil {
		o.ByObject = map[client.Object]cache.ByObject{}
	}
	o.ByObject[&corev1.Pod{}] = cache.ByObject{Transform: slimPod}
	o.ByObject[&appsv1.ReplicaSet{}] = cache.ByObject{Transform: slimReplicaSet}
	return o
}

// slimMeta is m without managedFields and kubectl's last-applied
// annotation (the map is copied, not changed).
func slimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	m.ManagedFields = nil
	if _, ok := m.Annotations[lastApplied]; ok {
		a := make(map[string]string, len(m.Annotations)-1)
		for k, v := range m.Annotations {
			if k != lastApplied {
				a[k] = v
			}
		}
		m.Annotations = a
	}
	return m
}

// slimPod keeps what the allocator, the preparer and early release read
// of a pod. Anything else (a tombstone) passes unchanged.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{TypeMeta: p.TypeMeta, ObjectMeta: slimMeta(p.ObjectMeta),
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs}}, nil
}

// slimReplicaSet keeps a ReplicaSet's metadata: its owner tells a pod's
// Deployment.
func slimReplicaSet(obj any) (any, error) {
	rs, ok := obj.(*appsv1.ReplicaSet)
	if !ok {
		return obj, nil
	}
	return &appsv1.ReplicaSet{TypeMeta: rs.TypeMeta, ObjectMeta: slimMeta(rs.ObjectMeta)}, nil
}
