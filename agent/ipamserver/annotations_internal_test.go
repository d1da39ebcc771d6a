package ipamserver

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berth-io/berth/api/v1alpha1"
)

func TestAnnotationWarnings(t *testing.T) {
	for _, tc := range []struct {
		name string
		ann  map[string]string
		want []string
	}{
		{name: "none", ann: nil},
		{name: "early", ann: map[string]string{v1alpha1.AnnotationRelease: "early"}},
		{name: "release typo", ann: map[string]string{v1alpha1.AnnotationRelease: "erly"}, want: []string{
			`malformed annotation: berth.io/ip-release: "erly": want "early", or no annotation to release the addresses at the pod's CNI DEL; ` +
				"until it is fixed the pod's addresses are released at its CNI DEL, after its containers stopped"}},
		{name: "release empty", ann: map[string]string{v1alpha1.AnnotationRelease: ""}, want: []string{
			`malformed annotation: berth.io/ip-release: "": want "early", or no annotation to release the addresses at the pod's CNI DEL; ` +
				"until it is fixed the pod's addresses are released at its CNI DEL, after its containers stopped"}},
		// These fail the ADD instead (internal/ipalloc), with kubelet's Event.
		{name: "retain typo", ann: map[string]string{v1alpha1.AnnotationRetain: "flase"}},
		{name: "bad group and pools", ann: map[string]string{v1alpha1.AnnotationGroup: "Bad_Group", v1alpha1.AnnotationPool: "p,,q"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := annotationWarnings(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: tc.ann}})
			if !slices.Equal(got, tc.want) {
				t.Errorf("annotationWarnings(%v) =\n%q\nwant\n%q", tc.ann, got, tc.want)
			}
		})
	}
}
