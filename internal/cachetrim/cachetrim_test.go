package cachetrim_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"runtime"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/cachetrim"
)

// runningPod is a Deployment's pod as the API server serves it once it
// runs: what an informer decodes.
func runningPod() *corev1.Pod {
	now := metav1.Now()
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-7d9c5b6f4-x2x9q", GenerateName: "web-7d9c5b6f4-", UID: "0b6a3c1e-5d0f-4f59-9c1a-2f5e8d7c6b4a",
			ResourceVersion: "123456", CreationTimestamp: now,
			Labels: map[string]string{"app": "web", "pod-template-hash": "7d9c5b6f4"},
			Annotations: map[string]string{v1alpha1.AnnotationRelease: "early", cachetrim.LastApplied: `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"}}`,
				"kubectl.kubernetes.io/restartedAt": "2026-11-26T09:00:00Z"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-7d9c5b6f4", UID: "rs-uid", Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1", Time: &now,
				FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(`{"f:metadata":{"f:generateName":{},"f:labels":{".":{},"f:app":{},"f:pod-template-hash":{}},"f:ownerReferences":{".":{},"k:{\"uid\":\"rs-uid\"}":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"web\"}":{".":{},"f:image":{},"f:name":{},"f:ports":{}}}}}`)},
				{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1", Time: &now, Subresource: "status",
					FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(`{"f:status":{"f:conditions":{},"f:containerStatuses":{},"f:hostIP":{},"f:phase":{},"f:podIP":{},"f:podIPs":{},"f:startTime":{}}}`)}},
		},
		Spec: corev1.PodSpec{
			NodeName: "node-a", ServiceAccountName: "default", RestartPolicy: corev1.RestartPolicyAlways, DNSPolicy: corev1.DNSClusterFirst,
			TerminationGracePeriodSeconds: ptr.To[int64](30), SchedulerName: "default-scheduler", EnableServiceLinks: ptr.To(true), PreemptionPolicy: ptr.To(corev1.PreemptLowerPriority),
			Containers: []corev1.Container{{Name: "web", Image: "registry.example/shop/web:1.4.2", ImagePullPolicy: corev1.PullIfNotPresent,
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
				Env: []corev1.EnvVar{{Name: "KUBERNETES_FILELOGS", Value: "/var/log/web"}, {Name: "LOG_LEVEL", Value: "info"},
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}}},
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
					Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}},
				ReadinessProbe:           &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 10},
				VolumeMounts:             []corev1.VolumeMount{{Name: "kube-api-access-x2x9q", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}},
				TerminationMessagePath:   "/dev/termination-log",
				TerminationMessagePolicy: corev1.TerminationMessageReadFile}},
			Volumes: []corev1.Volume{{Name: "kube-api-access-x2x9q", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{ExpirationSeconds: ptr.To[int64](3607), Path: "token"}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
				{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}}},
				DefaultMode: ptr.To[int32](420)}}}},
			Tolerations: []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](300)},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](300)}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, HostIP: "192.0.2.10", HostIPs: []corev1.HostIP{{IP: "192.0.2.10"}},
			PodIP: "10.244.0.17", PodIPs: []corev1.PodIP{{IP: "10.244.0.17"}}, StartTime: &now, QOSClass: corev1.PodQOSBurstable,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionTrue, LastTransitionTime: now},
				{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now}, {Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
				{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now}, {Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "web", Ready: true, Started: ptr.To(true), Image: "registry.example/shop/web:1.4.2",
				ImageID:     "registry.example/shop/web@sha256:4c1e0f5d2b8a9e3f7c6d5b4a3928171605f4e3d2c1b0a9f8e7d6c5b4a3928171",
				ContainerID: "containerd://9f3c2b1a0e8d7c6b5a49382716f5e4d3c2b1a0f9e8d7c6b5a4938271605f4e3d",
				State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}}},
	}
}

// transforms are Options' transforms by the type they trim.
func transforms() map[string]toolscache.TransformFunc {
	out := map[string]toolscache.TransformFunc{}
	for obj, b := range cachetrim.Options(cache.Options{}).ByObject {
		out[fmt.Sprintf("%T", obj)] = b.Transform
	}
	return out
}

func TestPod(t *testing.T) {
	full := runningPod()
	got, err := cachetrim.Pod(full)
	if err != nil {
		t.Fatal(err)
	}
	want := &corev1.Pod{TypeMeta: full.TypeMeta, ObjectMeta: *full.ObjectMeta.DeepCopy(),
		Spec:   corev1.PodSpec{NodeName: "node-a"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.17", PodIPs: []corev1.PodIP{{IP: "10.244.0.17"}}}}
	want.ManagedFields = nil
	delete(want.Annotations, cachetrim.LastApplied)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("trimmed pod\n%+v\nwant\n%+v", got, want)
	}
	if _, ok := full.Annotations[cachetrim.LastApplied]; !ok || full.ManagedFields == nil {
		t.Error("Pod changed the object it was given")
	}
	if tr := transforms()["*v1.Pod"]; tr == nil {
		t.Error("Options does not trim pods")
	} else if got, _ := tr(full); !reflect.DeepEqual(got, want) {
		t.Errorf("Options trims pods otherwise: %+v", got)
	}
	tomb := toolscache.DeletedFinalStateUnknown{Key: "shop/web", Obj: runningPod()}
	if got, _ := cachetrim.Pod(tomb); !reflect.DeepEqual(got, tomb) {
		t.Errorf("a tombstone changed: %+v", got)
	}
}

// TestOptions_metadataOnly: ReplicaSets, Deployments, StatefulSets and
// Nodes keep their type and metadata, less managedFields and kubectl's
// annotation.
func TestOptions_metadataOnly(t *testing.T) {
	meta := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: "shop", Name: "web", UID: "u", ResourceVersion: "7",
			Annotations:     map[string]string{cachetrim.LastApplied: "{}", "keep": "1"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "web", Controller: ptr.To(true)}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager"}}}
	}
	want := meta()
	want.ManagedFields, want.Annotations = nil, map[string]string{"keep": "1"}
	template := corev1.PodTemplateSpec{Spec: runningPod().Spec}
	tm := func(kind, version string) metav1.TypeMeta { return metav1.TypeMeta{Kind: kind, APIVersion: version} }
	for _, tc := range []struct {
		obj, want client.Object
	}{
		{&appsv1.ReplicaSet{TypeMeta: tm("ReplicaSet", "apps/v1"), ObjectMeta: meta(), Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To[int32](3), Template: template}},
			&appsv1.ReplicaSet{TypeMeta: tm("ReplicaSet", "apps/v1"), ObjectMeta: want}},
		{&appsv1.Deployment{TypeMeta: tm("Deployment", "apps/v1"), ObjectMeta: meta(), Spec: appsv1.DeploymentSpec{Template: template}},
			&appsv1.Deployment{TypeMeta: tm("Deployment", "apps/v1"), ObjectMeta: want}},
		{&appsv1.StatefulSet{TypeMeta: tm("StatefulSet", "apps/v1"), ObjectMeta: meta(), Spec: appsv1.StatefulSetSpec{Template: template}},
			&appsv1.StatefulSet{TypeMeta: tm("StatefulSet", "apps/v1"), ObjectMeta: want}},
		{&corev1.Node{TypeMeta: tm("Node", "v1"), ObjectMeta: meta(), Status: corev1.NodeStatus{Images: []corev1.ContainerImage{{Names: []string{"x"}, SizeBytes: 1}}}},
			&corev1.Node{TypeMeta: tm("Node", "v1"), ObjectMeta: want}},
	} {
		name := fmt.Sprintf("%T", tc.obj)
		tr := transforms()[name]
		if tr == nil {
			t.Errorf("%s: not trimmed", name)
			continue
		}
		got, err := tr(tc.obj)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: trimmed to %+v, %v; want %+v", name, got, err, tc.want)
		}
		if got, _ := tr(toolscache.DeletedFinalStateUnknown{Key: "k", Obj: tc.obj}); !reflect.DeepEqual(got, toolscache.DeletedFinalStateUnknown{Key: "k", Obj: tc.obj}) {
			t.Errorf("%s: a tombstone changed: %+v", name, got)
		}
	}
}

// BenchmarkCachedObject is the heap one cached object holds, as an
// informer decodes it: a running Deployment pod whole (pod/full), without
// managedFields (pod/no-managedfields: Berth's caches until
// 2026-11-26) and with Options' transform (pod/slim); its
// ReplicaSet the same way; a claim without managedFields, as cached.
func BenchmarkCachedObject(b *testing.B) {
	pod := runningPod()
	rs := &appsv1.ReplicaSet{TypeMeta: metav1.TypeMeta{Kind: "ReplicaSet", APIVersion: "apps/v1"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-7d9c5b6f4", UID: "rs-uid", ResourceVersion: "123400", Generation: 1,
			Labels:          map[string]string{"app": "web", "pod-template-hash": "7d9c5b6f4"},
			Annotations:     map[string]string{"deployment.kubernetes.io/desired-replicas": "3", "deployment.kubernetes.io/max-replicas": "4", "deployment.kubernetes.io/revision": "2"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "web", UID: "d-uid", Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}},
			ManagedFields:   pod.ManagedFields[:1]},
		Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To[int32](3), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web", "pod-template-hash": "7d9c5b6f4"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web", "pod-template-hash": "7d9c5b6f4"}}, Spec: pod.Spec}},
		Status: appsv1.ReplicaSetStatus{Replicas: 3, ReadyReplicas: 3, AvailableReplicas: 3, FullyLabeledReplicas: 3, ObservedGeneration: 1}}
	rs.Spec.Template.Spec.NodeName = ""
	ord := int32(0)
	claim := &v1alpha1.IPClaim{TypeMeta: metav1.TypeMeta{Kind: "IPClaim", APIVersion: "berth.io/v1alpha1"},
		ObjectMeta: metav1.ObjectMeta{Name: "pods-10-244-0-17", UID: "c-uid", ResourceVersion: "123500", Generation: 2,
			Labels: map[string]string{v1alpha1.LabelPool: "pods", v1alpha1.LabelNode: "node-a", "berth.io/pod-uid": string(pod.UID)}},
		Spec: v1alpha1.IPClaimSpec{Pool: "pods", Address: "10.244.0.17", App: &v1alpha1.App{Kind: v1alpha1.AppStatefulSet, Namespace: "shop", Name: "db", Ordinal: &ord},
			Pod: v1alpha1.PodRef{Namespace: "shop", Name: "db-0", UID: pod.UID}, ContainerID: "9f3c2b1a0e8d7c6b5a49382716f5e4d3c2b1a0f9e8d7c6b5a4938271605f4e3d",
			Interface: "eth0", Node: "node-a", State: v1alpha1.ClaimBound}}
	whole := func(o any) (any, error) { return o, nil }
	for _, bc := range []struct {
		name      string
		obj       any
		new       func() any
		transform func(any) (any, error)
	}{
		{"pod/full", pod, func() any { return &corev1.Pod{} }, whole},
		{"pod/no-managedfields", pod, func() any { return &corev1.Pod{} }, cache.TransformStripManagedFields()},
		{"pod/slim", pod, func() any { return &corev1.Pod{} }, cachetrim.Pod},
		{"replicaset/no-managedfields", rs, func() any { return &appsv1.ReplicaSet{} }, cache.TransformStripManagedFields()},
		{"replicaset/slim", rs, func() any { return &appsv1.ReplicaSet{} }, transforms()["*v1.ReplicaSet"]},
		{"ipclaim/no-managedfields", claim, func() any { return &v1alpha1.IPClaim{} }, cache.TransformStripManagedFields()},
	} {
		data, err := json.Marshal(bc.obj)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(bc.name, func(b *testing.B) {
			kept := make([]any, 0, b.N)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			for range b.N {
				o := bc.new()
				if err := json.Unmarshal(data, o); err != nil {
					b.Fatal(err)
				}
				o, _ = bc.transform(o)
				kept = append(kept, o)
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			b.ReportMetric((float64(after.HeapAlloc)-float64(before.HeapAlloc))/float64(b.N), "heap-B/object")
			runtime.KeepAlive(kept)
		})
	}
}
