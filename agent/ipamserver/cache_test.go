package ipamserver

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/cachetrim"
)

// TestPreparer_trimmedPods: the preparer and early release decide the same
// on a pod as on its copy in the agent's trimmed cache.
func TestPreparer_trimmedPods(t *testing.T) {
	pod := func(edit func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-0", UID: "u",
			Annotations: map[string]string{v1alpha1.AnnotationRelease: "early"}},
			Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "web", Image: "web:1"}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.17", PodIPs: []corev1.PodIP{{IP: "10.244.0.17"}},
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}}
		edit(p)
		return p
	}
	for name, edit := range map[string]func(*corev1.Pod){
		"running":              func(*corev1.Pod) {},
		"pending":              func(p *corev1.Pod) { p.Status = corev1.PodStatus{Phase: corev1.PodPending} },
		"failed":               func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed },
		"succeeded":            func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded },
		"terminating":          func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{} },
		"host network pending": func(p *corev1.Pod) { p.Spec.HostNetwork = true; p.Status = corev1.PodStatus{Phase: corev1.PodPending} },
		"other node":           func(p *corev1.Pod) { p.Spec.NodeName = "node-b"; p.Status = corev1.PodStatus{Phase: corev1.PodPending} },
	} {
		full := pod(edit)
		got, err := cachetrim.Pod(full)
		if err != nil {
			t.Fatal(err)
		}
		trimmed := got.(*corev1.Pod)
		for what, decide := range map[string]func(*corev1.Pod) bool{
			"wantsPrepare": func(p *corev1.Pod) bool { return wantsPrepare(p, "node-a") },
			"finished":     func(p *corev1.Pod) bool { return finished(p, "node-a") },
			"wantsEarly":   func(p *corev1.Pod) bool { return wantsEarly(p, "node-a") },
			"notPodIP": func(p *corev1.Pod) bool {
				return notPodIP(p)(&v1alpha1.IPClaim{Spec: v1alpha1.IPClaimSpec{Address: "10.244.0.17"}})
			},
		} {
			if decide(full) != decide(trimmed) {
				t.Errorf("%s pod: %s is %v, on the trimmed copy %v", name, what, decide(full), decide(trimmed))
			}
		}
	}
}
