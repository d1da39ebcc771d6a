package ipamserver_test

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/test/poll"
)

// TestServer_conflict, against a real API server: StatefulSet pod db-0
// gets its ordinal's retained address back on its next sandbox;
// berth-netcheck finds another host answering for it and reports it
// (CONFLICT); the runtime's DEL follows. The claim stays out of use (state
// Conflict until the quarantine ends, not Reserved for the ordinal), the
// pod's next ADD gets another address, the pod has a Warning Event
// AddressConflict naming the address and the MAC, and the pool's conflict
// counter is 1. A repeated report changes nothing; one for an address the
// container does not hold is an error.
func TestServer_conflict(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	restCfg, c := startAPI(t)
	mustCreate(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}})
	mustCreate(t, c, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.30.0.0/24"}})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "db-0",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "db", UID: "ss", Controller: ptr.To(true)}}},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	mustCreate(t, c, pod)

	st := newNodeStore(t, ctx, restCfg, c)
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		t.Fatal(err)
	}
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	broadcaster.StartRecordingToSink(ctx.Done())
	t.Cleanup(broadcaster.Shutdown)
	dir := t.TempDir()
	const quarantine = 10 * time.Minute
	h := start(t, ipamserver.Config{SocketPath: filepath.Join(dir, "ipam.sock"), QueueDir: filepath.Join(dir, "queue"),
		AttachmentDir: filepath.Join(dir, "attachments"), Node: "n1", Store: st, DeferRelease: true, ConflictQuarantine: quarantine,
		Recorder: broadcaster.NewRecorder(scheme(t), "berth-agent"), Registerer: prometheus.NewRegistry(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})

	add := func(id string) string {
		t.Helper()
		r := h.call(protocol.CommandAdd, protocol.Request{ContainerID: id, IfName: "eth0", Netns: "/var/run/netns/" + id,
			PodNamespace: "ns", PodName: "db-0", PodUID: string(pod.UID), Network: "berth"})
		if r.Error != nil {
			t.Fatalf("ADD %s: %+v", id, r.Error)
		}
		return strings.TrimSuffix(r.IPs[0].Address, "/24")
	}
	del := func(id string) {
		t.Helper()
		if r := h.call(protocol.CommandDel, protocol.Request{ContainerID: id, IfName: "eth0"}); r.Error != nil {
			t.Fatalf("DEL %s: %+v", id, r.Error)
		}
	}
	claimOf := func(addr string) v1alpha1.IPClaim {
		t.Helper()
		var cl v1alpha1.IPClaim
		if err := c.Get(ctx, client.ObjectKey{Name: "p-" + strings.ReplaceAll(addr, ".", "-")}, &cl); err != nil {
			t.Fatalf("claim of %s: %v", addr, err)
		}
		return cl
	}

	// The ordinal's address, retained across sandboxes.
	bad := add("c1")
	del("c1")
	if got := add("c2"); got != bad {
		t.Fatalf("db-0's second sandbox got %s, want its ordinal's %s", got, bad)
	}

	const mac = "02:42:0a:1e:00:63"
	before := time.Now()
	if r := h.call(protocol.CommandConflict, protocol.Request{ContainerID: "c2", IfName: "eth0", Address: bad, MAC: mac}); r.Error != nil {
		t.Fatalf("CONFLICT: %+v", r.Error)
	}
	del("c2")
	good := add("c3")
	if good == bad {
		t.Fatalf("after the conflict db-0's next ADD got %s again", bad)
	}
	cl := claimOf(bad)
	var until time.Time
	if cl.Spec.ReservedUntil != nil {
		until = cl.Spec.ReservedUntil.Time
	}
	if cl.Spec.State != v1alpha1.ClaimConflict || cl.Spec.ContainerID != "" ||
		until.Before(before.Add(quarantine).Add(-time.Second)) || until.After(time.Now().Add(quarantine)) {
		t.Fatalf("claim of %s: state %s, container %q, until %v; want Conflict, none, about now + %s", bad, cl.Spec.State, cl.Spec.ContainerID, cl.Spec.ReservedUntil, quarantine)
	}
	if g := claimOf(good); g.Spec.State != v1alpha1.ClaimBound || g.Spec.ContainerID != "c3" || g.Spec.App == nil || ptr.Deref(g.Spec.App.Ordinal, -1) != 0 {
		t.Fatalf("claim of %s: %+v, want Bound to c3, retained for ordinal 0", good, g.Spec)
	}
	if n := counter(t, h.reg, "berth_agent_ipam_address_conflicts_total", "pool", "p"); n != 1 {
		t.Errorf("conflicts of pool p = %v, want 1", n)
	}

	var ev eventsv1.Event
	poll.Until(t, 30*time.Second, "the AddressConflict Event on db-0", func() bool {
		var l eventsv1.EventList
		if err := c.List(ctx, &l, client.InNamespace("ns")); err != nil {
			t.Fatal(err)
		}
		for _, e := range l.Items {
			if e.Reason == ipamserver.ReasonAddressConflict {
				ev = e
				return true
			}
		}
		return false
	})
	for _, want := range []string{"IP " + bad + " (pool p) on eth0 is already in use by " + mac, "the next attempt gets another address",
		"retained for StatefulSet db ordinal 0 from then on"} {
		if !strings.Contains(ev.Note, want) {
			t.Errorf("Event note %q does not say %q", ev.Note, want)
		}
	}
	if ev.Type != corev1.EventTypeWarning || ev.Regarding.UID != pod.UID || ev.Regarding.Name != "db-0" {
		t.Errorf("Event %s about %+v, want Warning about pod db-0 (uid %s)", ev.Type, ev.Regarding, pod.UID)
	}

	// A repeated report changes nothing; one of an address the container
	// does not hold is refused.
	if r := h.call(protocol.CommandConflict, protocol.Request{ContainerID: "c2", IfName: "eth0", Address: bad, MAC: mac}); r.Error != nil {
		t.Fatalf("repeated CONFLICT: %+v", r.Error)
	}
	if n := counter(t, h.reg, "berth_agent_ipam_address_conflicts_total", "pool", "p"); n != 1 {
		t.Errorf("conflicts of pool p after a repeated report = %v, want 1", n)
	}
	r := h.call(protocol.CommandConflict, protocol.Request{ContainerID: "c3", IfName: "eth0", Address: "10.30.0.250"})
	if r.Error == nil || !strings.Contains(r.Error.Error(), "no claim of the container holds the address") {
		t.Fatalf("CONFLICT of an address not held: %+v, want an error", r.Error)
	}
	if r := h.call(protocol.CommandConflict, protocol.Request{ContainerID: "c3", IfName: "eth0", Address: "ten"}); r.Error == nil || r.Error.Code != protocol.CodeInvalidConfig {
		t.Fatalf("CONFLICT of a malformed address: %+v, want code %d", r.Error, protocol.CodeInvalidConfig)
	}
	if g := claimOf(good); g.Spec.State != v1alpha1.ClaimBound {
		t.Fatalf("claim of %s after the refused reports: %s, want Bound", good, g.Spec.State)
	}
}
