package ipamserver

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/berth-io/berth/agent/ipam"
	"github.com/berth-io/berth/agent/ipam/ipamtest"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/test/netnstest"
)

// TestEarlyReleaser_process: a terminating pod annotated for early release
// loses its address on its interface (in a real network namespace, through
// a netlink handle), and its claim becomes Reserved before any DEL.
func TestEarlyReleaser_process(t *testing.T) {
	pod, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pod.Close(); _ = testutils.UnmountNS(pod) })

	st := ipamtest.New()
	st.AddPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.77.0.0/24"}})
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-1", UID: "uid-1",
		Annotations:     map[string]string{v1alpha1.AnnotationRelease: "early"},
		OwnerReferences: []metav1.OwnerReference{{Kind: "StatefulSet", Name: "web", Controller: ptr.To(true)}}},
		Spec: corev1.PodSpec{NodeName: "n1"}}
	st.SetPod(p)
	alloc, err := ipam.New(ipam.Config{Store: st.View(false), Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	als, err := alloc.Allocate(ctx, ipam.Request{ContainerID: "c1", IfName: "eth0", PodNamespace: "ns", PodName: "web-1"})
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
	r := &earlyReleaser{alloc: alloc, node: "n1", dir: dir, unplug: Unplug}
	if err := r.process(ctx, p.UID); err != nil {
		t.Fatalf("process: %v", err)
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
}

// TestMain puts /run/netns back as it was (early release's tests make
// named namespaces).
func TestMain(m *testing.M) { os.Exit(netnstest.Run(m)) }
