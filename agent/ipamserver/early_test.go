package ipamserver

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/ipalloc"
	"github.com/berth-io/berth/internal/ipalloc/ipalloctest"
	"github.com/berth-io/berth/test/netnstest"
)

// TestEarlyReleaser_process: a terminating pod annotated for early release
// loses its address on its interface (in a real network namespace, through
// a netlink handle), its claim becomes Reserved before any DEL, and one
// Event on the pod says so.
func TestEarlyReleaser_process(t *testing.T) {
	pod, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pod.Close(); _ = testutils.UnmountNS(pod) })

	st := ipalloctest.New()
	st.AddPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.77.0.0/24"}})
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-1", UID: "uid-1",
		Annotations:     map[string]string{v1alpha1.AnnotationRelease: "early"},
		OwnerReferences: []metav1.OwnerReference{{Kind: "StatefulSet", Name: "web", Controller: ptr.To(true)}}},
		Spec: corev1.PodSpec{NodeName: "n1"}}
	st.SetPod(p)
	alloc, err := ipalloc.New(ipalloc.Config{Store: st.View(false), Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	als, err := alloc.Allocate(ctx, ipalloc.Request{ContainerID: "c1", IfName: "eth0", PodNamespace: "ns", PodName: "web-1"})
	if err != nil {
		t.Fatal(err)
	}
	addr := als[0].Address
	// The pod's interface, with the address, as bridge/macvlan would leave it.
	if err := pod.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}})
	}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := writeAttachment(dir, attachment{ContainerID: "c1", IfName: "eth0", Netns: pod.Path()}); err != nil {
		t.Fatal(err)
	}

	p.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	if !wantsEarly(p, "n1") || wantsEarly(p, "n2") {
		t.Fatal("wantsEarly")
	}
	type event struct {
		pod               podRef
		typ, reason, note string
	}
	var events []event
	r := &earlyReleaser{alloc: alloc, node: "n1", dir: dir, unplug: Unplug, log: slog.New(slog.DiscardHandler),
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[podRef]()),
		event: func(pod podRef, typ, reason, note string) { events = append(events, event{pod, typ, reason, note}) }}
	defer r.queue.ShutDown()
	ref := podRef{UID: p.UID, Namespace: p.Namespace, Name: p.Name}
	r.work(ctx, ref)
	// One Event on the pod says what went and what it costs.
	want := event{ref, corev1.EventTypeNormal, ReasonReleasedEarly, "berth.io/ip-release: early: removed " + addr.Addr().String() +
		" from eth0 and released it for the app's next pod; the pod has no network for the rest of its termination"}
	if len(events) != 1 || events[0] != want {
		t.Fatalf("events %+v, want [%+v]", events, want)
	}
	// The pod's next update queues it again: nothing is left, no Event.
	r.work(ctx, ref)
	if len(events) != 1 || r.queue.Len() != 0 {
		t.Fatalf("second pass: events %+v, %d queued", events, r.queue.Len())
	}
	var left []string
	if err := pod.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		as, err := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range as {
			left = append(left, a.IPNet.String())
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("eth0 still has %v", left)
	}
	if cl := st.Claims(); len(cl) != 1 || cl[0].Spec.State != v1alpha1.ClaimReserved {
		t.Fatalf("claims %+v, want Reserved", cl)
	}
	// Unplugging from a namespace that is gone is not an error.
	if err := Unplug("/run/netns/berth-no-such-ns", "eth0", netip.MustParseAddr("10.77.0.9")); err != nil {
		t.Fatalf("Unplug of a gone netns: %v", err)
	}

	// A pod whose attachment this agent has no record of: a Warning Event
	// says why its address stays until DEL, and the pod is queued again.
	other := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-2", UID: "uid-2", Annotations: p.Annotations,
		OwnerReferences: p.OwnerReferences}, Spec: corev1.PodSpec{NodeName: "n1"}}
	st.SetPod(other)
	if _, err := alloc.Allocate(ctx, ipalloc.Request{ContainerID: "c2", IfName: "eth0", PodNamespace: "ns", PodName: "web-2"}); err != nil {
		t.Fatal(err)
	}
	r.work(ctx, podRef{UID: other.UID, Namespace: "ns", Name: "web-2"})
	if len(events) != 2 || events[1].typ != corev1.EventTypeWarning || events[1].reason != ReasonEarlyReleaseFailed ||
		!strings.Contains(events[1].note, "no record of the attachment of container c2") {
		t.Fatalf("events %+v, want a second, Warning %s naming the missing record", events, ReasonEarlyReleaseFailed)
	}
	if r.queue.NumRequeues(podRef{UID: other.UID, Namespace: "ns", Name: "web-2"}) != 1 {
		t.Error("the failed pod is not queued again")
	}
}

// TestMain puts /run/netns back as it was (early release's tests make
// named namespaces).
func TestMain(m *testing.M) { os.Exit(netnstest.Run(m)) }
