package ipamserver_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/test/poll"
)

// TestServer_add_badAnnotationEvent_inMemoryAPIServer: a pod whose
// berth.io/ip-release the agent does not understand gets its addresses
// (the default applies) and one Warning Event, however many ADDs (a
// recorder that keeps the Events in memory); a bad berth.io/ip-retain
// fails the ADD with what to fix instead.
func TestServer_add_badAnnotationEvent_inMemoryAPIServer(t *testing.T) {
	rec := events.NewFakeRecorder(10)
	h := serve(t, func(c *ipamserver.Config) { c.Recorder = rec })
	h.pod("db-0", map[string]string{v1alpha1.AnnotationRelease: "erly"})
	h.pod("db-1", map[string]string{v1alpha1.AnnotationRetain: "flase"})
	for _, id := range []string{"c1", "c2", "c3"} {
		if r := h.call(protocol.CommandAdd, protocol.Request{ContainerID: id, IfName: "eth0", PodNamespace: "ns", PodName: "db-0", Pools: []string{"p"}}); r.Error != nil || len(r.IPs) != 1 {
			t.Fatalf("ADD %s of db-0: %+v", id, r)
		}
	}
	want := `Warning ` + ipamserver.ReasonBadAnnotation + ` malformed annotation: berth.io/ip-release: "erly": want "early", or no annotation to release the addresses at the pod's CNI DEL; ` +
		"until it is fixed the pod's addresses are released at its CNI DEL, after its containers stopped"
	var got []string
	for len(rec.Events) > 0 {
		got = append(got, <-rec.Events)
	}
	if len(got) != 1 || got[0] != want {
		t.Errorf("Events after 3 ADDs of db-0:\n%s\nwant one:\n%s", strings.Join(got, "\n"), want)
	}

	r := h.call(protocol.CommandAdd, protocol.Request{ContainerID: "c4", IfName: "eth0", PodNamespace: "ns", PodName: "db-1", Pools: []string{"p"}})
	if r.Error == nil || r.Error.Code != protocol.CodeInvalidConfig ||
		!strings.Contains(r.Error.Details, `malformed annotation: berth.io/ip-retain: "flase": want "true" or "false"`) {
		t.Errorf("ADD of db-1 (ip-retain: flase): %+v, want code 7 naming the annotation", r.Error)
	}
}

// badAnnotationEvents returns the BadBerthAnnotation Events on pod.
func badAnnotationEvents(t *testing.T, ctx context.Context, c client.Client, pod *corev1.Pod) []eventsv1.Event {
	t.Helper()
	var evs eventsv1.EventList
	if err := c.List(ctx, &evs, client.InNamespace(pod.Namespace)); err != nil {
		t.Fatal(err)
	}
	var out []eventsv1.Event
	for _, e := range evs.Items {
		if e.Regarding.UID == pod.UID && e.Reason == ipamserver.ReasonBadAnnotation {
			out = append(out, e)
		}
	}
	return out
}

// TestServer_badAnnotationEvent: on a real API server, a pod scheduled to
// the node with berth.io/ip-release: erly, and a running pod annotated
// "Early" later, each get one Warning Event naming the value and what the
// annotation wants, recorded once (not again at the pod's ADDs, nor at
// later updates of the pod).
func TestServer_badAnnotationEvent(t *testing.T) {
	cfg, c := startAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	mustCreate(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}})
	mustCreate(t, c, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"}})
	newPod := func(name string, ann map[string]string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Annotations: ann},
			Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		mustCreate(t, c, p)
		return p
	}
	typo := newPod("typo", map[string]string{v1alpha1.AnnotationRelease: "erly"})
	later := newPod("later", nil)
	a := startOnManager(t, cfg, ipamserver.Config{SocketPath: filepath.Join(dir, "ipam.sock"), QueueDir: filepath.Join(dir, "queue"),
		AttachmentDir: filepath.Join(dir, "attachments")})
	poll.Until(t, 30*time.Second, "the agent to be ready", func() bool { return a.srv.Check(nil) == nil })

	poll.Until(t, 30*time.Second, "an Event on the pod scheduled with ip-release: erly", func() bool { return len(badAnnotationEvents(t, ctx, c, typo)) > 0 })
	for _, id := range []string{"c1", "c2"} {
		if r := a.call(t, protocol.CommandAdd, protocol.Request{ContainerID: id, IfName: "eth0", PodNamespace: "ns", PodName: "typo",
			PodUID: string(typo.UID), Pools: []string{"p"}}); r.Error != nil || len(r.IPs) != 1 {
			t.Fatalf("ADD %s of the pod with ip-release: erly: %+v", id, r)
		}
	}
	patch := client.MergeFrom(later.DeepCopy())
	later.Annotations = map[string]string{v1alpha1.AnnotationRelease: "Early"}
	if err := c.Patch(ctx, later, patch); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "an Event on the pod annotated later", func() bool { return len(badAnnotationEvents(t, ctx, c, later)) > 0 })
	patch = client.MergeFrom(later.DeepCopy())
	later.Labels = map[string]string{"touched": "yes"}
	if err := c.Patch(ctx, later, patch); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // would an Event be recorded again, its write is done by then

	for _, tc := range []struct {
		pod   *corev1.Pod
		value string
	}{{typo, "erly"}, {later, "Early"}} {
		evs := badAnnotationEvents(t, ctx, c, tc.pod)
		if len(evs) != 1 || evs[0].Series != nil || evs[0].Type != corev1.EventTypeWarning {
			t.Errorf("pod %s: Events %+v, want one Warning, recorded once", tc.pod.Name, evs)
			continue
		}
		want := `malformed annotation: berth.io/ip-release: "` + tc.value + `": want "early", or no annotation to release the addresses at the pod's CNI DEL; ` +
			"until it is fixed the pod's addresses are released at its CNI DEL, after its containers stopped"
		if evs[0].Note != want {
			t.Errorf("pod %s: Event note\n%s\nwant\n%s", tc.pod.Name, evs[0].Note, want)
		}
	}
}
