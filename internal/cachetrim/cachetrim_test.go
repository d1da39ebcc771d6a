package cachetrim_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"runtime"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/cachetrim"
	"github.com/berth-io/berth/test/kubeobjects"
)

// runningPod is kubeobjects' running pod, annotated for early release
// and by kubectl apply.
func runningPod() *corev1.Pod {
	p := kubeobjects.RunningPod("web", 0, "node-a", "10.244.0.17")
	p.Annotations[v1alpha1.AnnotationRelease] = "early"
	p.Annotations[cachetrim.LastApplied] = `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"}}`
	return p
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
// informer decodes it: kubeobjects' running Deployment pod, the one
// test/bench/cachemem creates, whole (pod/full), without
// managedFields (pod/no-managedfields: Berth's caches until
// 2026-11-26) and with Options' transform (pod/slim); its
// ReplicaSet the same way; a claim without managedFields, as cached.
func BenchmarkCachedObject(b *testing.B) {
	pod := kubeobjects.RunningPod("web", 0, "node-a", "10.244.0.17")
	rs := kubeobjects.ReplicaSet(pod, 3)
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
