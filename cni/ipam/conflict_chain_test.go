package ipam_test

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/test/poll"
)

// TestPlugin_netcheckConflict runs bridge + berth-ipam + berth-netcheck
// through libcni in real network namespaces, as containerd does. StatefulSet
// pod web-0's address is retained for its ordinal; while it is away a
// stranger on the bridge takes that address. web-0's next sandbox gets the
// address back from berth-ipam, berth-netcheck finds the stranger
// answering for it, tells the agent and fails the ADD; after the
// runtime's DEL of the chain the claim is out of use (Conflict), and the
// next sandbox gets another address, which passes the check.
func TestPlugin_netcheckConflict(t *testing.T) {
	st, sock, queue := setup(t)
	startAgent(t, st, sock, queue, true)
	c := newChainOf(t, fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "berth-test", "plugins": [
		{"type": "bridge", "bridge": "bipam0", "isGateway": true, "ipMasq": false,
		 "ipam": {"type": "berth-ipam", "socket": %q, "queueDir": %q, "timeout": "10s"}},
		{"type": "berth-netcheck", "ipamSocket": %q}]}`, sock, queue, sock))
	p := deployPod(st, "web-0")

	first := rt("sandbox-1", newNS(t), p)
	res, err := c.add(first)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	retained := res.IPs[0].Address
	if err := c.del(first); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "web-0's address to be Reserved for its ordinal", func() bool {
		claims := st.Claims()
		return len(claims) == 1 && claims[0].Spec.State == v1alpha1.ClaimReserved
	})

	// A stranger on the bridge with that address (a leaked pod, a host
	// configured by hand).
	stranger := newNS(t)
	if err := c.host.Do(func(ns.NetNS) error {
		br, err := netlink.LinkByName("bipam0")
		if err != nil {
			return err
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vstranger", MasterIndex: br.Attrs().Index}, PeerName: "eth0",
			PeerNamespace: netlink.NsFd(int(stranger.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		return netlink.LinkSetUp(veth)
	}); err != nil {
		t.Fatalf("stranger's veth: %v", err)
	}
	var strangerMAC net.HardwareAddr
	if err := stranger.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		strangerMAC = l.Attrs().HardwareAddr
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &retained}); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	}); err != nil {
		t.Fatalf("stranger's address: %v", err)
	}

	second := rt("sandbox-2", newNS(t), p)
	_, err = c.add(second)
	var e *types.Error
	want := fmt.Sprintf("IP %s on eth0 is already in use by %s", retained.IP, strangerMAC)
	if !errors.As(err, &e) || e.Code != 120 || e.Msg != want ||
		e.Details != "berth-agent took the address out of use: the pod's next ADD gets another address" {
		t.Fatalf("ADD with the stranger on the address: %v, want code 120 %q, the agent told", err, want)
	}
	if err := c.del(second); err != nil { // the runtime's DEL after a failed ADD
		t.Fatal(err)
	}
	third := rt("sandbox-3", newNS(t), p)
	res, err = c.add(third)
	if err != nil {
		t.Fatalf("ADD after the conflict: %v", err)
	}
	if got := res.IPs[0].Address.String(); got == retained.String() {
		t.Fatalf("ADD after the conflict got %s again", got)
	}
	var states []string
	for _, cl := range st.Claims() {
		states = append(states, cl.Spec.Address+"="+string(cl.Spec.State))
	}
	if want := retained.IP.String() + "=Conflict"; !strings.Contains(strings.Join(states, " "), want) {
		t.Errorf("claims %v, want %s", states, want)
	}
}
