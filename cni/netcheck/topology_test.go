package netcheck

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// requireRoot fails (never skips) a test that needs root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it makes network namespaces, veths and a bridge")
	}
}

// segment is one Ethernet segment: a bridge br0 in a network namespace of
// its own, which the test's other namespaces join through veths.
type segment struct {
	tb     testing.TB
	prefix string
	ns     ns.NetNS
	h      *netlink.Handle
	br     netlink.Link
}

// node is a network namespace with an interface eth0 on a segment.
type node struct {
	tb   testing.TB
	name string
	ns   ns.NetNS
	h    *netlink.Handle
	eth0 netlink.Link
	port netlink.Link // the peer, a port of br0
	mac  net.HardwareAddr
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9]+`)

// nsPrefix names a test's namespaces: "bnc-" + the test name, shortened
// with a hash when long.
func nsPrefix(tb testing.TB) string {
	n := strings.Trim(unsafeName.ReplaceAllString(tb.Name(), "-"), "-")
	if len(n) > 40 {
		sum := sha256.Sum256([]byte(tb.Name()))
		n = n[:31] + "-" + hex.EncodeToString(sum[:4])
	}
	return "bnc-" + n
}

// newNetNS makes a named network namespace (ip netns add) that the test's
// cleanup deletes.
func newNetNS(tb testing.TB, name string) (ns.NetNS, *netlink.Handle) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = exec.CommandContext(ctx, "ip", "netns", "del", name).Run() // a leftover of a killed run
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	n, err := ns.GetNS(filepath.Join("/run/netns", name))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = n.Close() })
	h, err := netlink.NewHandleAt(netns.NsHandle(n.Fd()))
	if err != nil {
		tb.Fatalf("netlink handle in %s: %v", name, err)
	}
	tb.Cleanup(h.Close)
	lo, err := h.LinkByName("lo")
	if err != nil {
		tb.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		tb.Fatal(err)
	}
	return n, h
}

// newSegment makes the bridge's namespace and the bridge.
func newSegment(tb testing.TB) *segment {
	tb.Helper()
	requireRoot(tb)
	s := &segment{tb: tb, prefix: nsPrefix(tb)}
	s.ns, s.h = newNetNS(tb, s.prefix+"-br")
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := s.h.LinkAdd(br); err != nil {
		tb.Fatalf("add bridge: %v", err)
	}
	if err := s.h.LinkSetUp(br); err != nil {
		tb.Fatal(err)
	}
	s.br = br
	return s
}

// attach makes namespace <prefix>-<name> with eth0 on the segment, up, with
// addrs ("10.1.2.3/24", "fd00::3/64"; IPv6 without duplicate address
// detection). dad turns the kernel's IPv6 duplicate address detection on
// for eth0; without it eth0 is set up as the bridge plugin does by default
// (accept_dad 0).
func (s *segment) attach(name string, dad bool, addrs ...string) *node {
	s.tb.Helper()
	n := &node{tb: s.tb, name: name}
	n.ns, n.h = newNetNS(s.tb, s.prefix+"-"+name)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(n.ns.Fd())),
	}
	if err := s.h.LinkAdd(veth); err != nil {
		s.tb.Fatalf("add veth %s: %v", name, err)
	}
	port, err := s.h.LinkByName(name)
	if err != nil {
		s.tb.Fatal(err)
	}
	if err := s.h.LinkSetMaster(port, s.br); err != nil {
		s.tb.Fatal(err)
	}
	if err := s.h.LinkSetUp(port); err != nil {
		s.tb.Fatal(err)
	}
	n.port = port
	if n.eth0, err = n.h.LinkByName("eth0"); err != nil {
		s.tb.Fatal(err)
	}
	n.mac = n.eth0.Attrs().HardwareAddr
	accept := "0"
	if dad {
		accept = "1"
	}
	n.sysctl("net/ipv6/conf/eth0/accept_dad", accept)
	for _, a := range addrs {
		n.addAddr(a, dad)
	}
	if err := n.h.LinkSetUp(n.eth0); err != nil {
		s.tb.Fatal(err)
	}
	// As the bridge plugin does: wait until the port is up (the kernel
	// applies carrier changes asynchronously), so frames pass.
	deadline := time.Now().Add(5 * time.Second)
	for {
		p, err := s.h.LinkByName(name)
		if err != nil {
			s.tb.Fatal(err)
		}
		if p.Attrs().OperState == netlink.OperUp {
			break
		}
		if time.Now().After(deadline) {
			s.tb.Fatalf("bridge port %s still %s", name, p.Attrs().OperState)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n
}

// sysctl writes a sysctl in the node's namespace.
func (n *node) sysctl(name, value string) {
	n.tb.Helper()
	err := n.ns.Do(func(ns.NetNS) error {
		return os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0o644)
	})
	if err != nil {
		n.tb.Fatalf("sysctl %s=%s in %s: %v", name, value, n.name, err)
	}
}

func (n *node) addAddr(cidr string, dad bool) {
	n.tb.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		n.tb.Fatal(err)
	}
	if a.IP.To4() == nil && !dad {
		a.Flags |= unix.IFA_F_NODAD
	}
	if err := n.h.AddrAdd(n.eth0, a); err != nil {
		n.tb.Fatalf("add %s to %s: %v", cidr, n.name, err)
	}
}

func (n *node) delAddr(cidr string) {
	n.tb.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		n.tb.Fatal(err)
	}
	if err := n.h.AddrDel(n.eth0, a); err != nil {
		n.tb.Fatalf("delete %s from %s: %v", cidr, n.name, err)
	}
}

func (n *node) down() {
	n.tb.Helper()
	if err := n.h.LinkSetDown(n.eth0); err != nil {
		n.tb.Fatalf("set %s eth0 down: %v", n.name, err)
	}
}

// capture records the ARP and NDP frames eth0 of n receives until the test
// ends; the returned func lists those received so far, in order.
func (n *node) capture() func() [][]byte {
	n.tb.Helper()
	var c *packetConn
	err := n.ns.Do(func(ns.NetNS) error {
		var err error
		c, err = listenPacket(n.eth0.Attrs().Index)
		return err
	})
	if err != nil {
		n.tb.Fatal(err)
	}
	n.tb.Cleanup(func() { _ = c.Close() })
	var (
		mu     sync.Mutex
		frames [][]byte
	)
	c.subscribe(func(f []byte) {
		mu.Lock()
		defer mu.Unlock()
		frames = append(frames, append([]byte(nil), f...))
	})
	return func() [][]byte {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(frames)
	}
}

func (n *node) String() string { return fmt.Sprintf("%s (%s)", n.name, n.mac) }
