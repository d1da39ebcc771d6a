package netcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// request is a Request for eth0 of pod.
func request(pod *node, addrs []string, gws ...string) Request {
	req := Request{NetNS: pod.ns, IfName: "eth0"}
	for _, a := range addrs {
		req.Addrs = append(req.Addrs, netip.MustParsePrefix(a))
	}
	for _, g := range gws {
		req.Gateways = append(req.Gateways, netip.MustParseAddr(g))
	}
	return req
}

func mustChecker(t *testing.T, cfg Config) *Checker {
	t.Helper()
	c, err := NewChecker(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func runCheck(t *testing.T, cfg Config, req Request) (time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := mustChecker(t, cfg).Run(ctx, req)
	return time.Since(start), err
}

var (
	v4     = []string{"10.1.2.3/24"}
	dual   = []string{"10.1.2.3/24", "fd00:1:2::3/64"}
	gw4    = "10.1.2.1"
	gw6    = "fd00:1:2::1"
	gwAddr = []string{"10.1.2.1/24", "fd00:1:2::1/64"}
)

func TestChecker_Run_Healthy(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		addrs []string
		gws   []string
		dad   bool // kernel DAD on the pod's eth0: no usable link-local address at first
		cfg   Config
	}{
		{name: "ipv4", addrs: v4, gws: []string{gw4}},
		{name: "dual-stack", addrs: dual, gws: []string{gw4, gw6}},
		{name: "dual-stack with kernel DAD", addrs: dual, gws: []string{gw4, gw6}, dad: true},
		{name: "ipv6 only", addrs: []string{"fd00:1:2::3/64"}, gws: []string{gw6}},
		{name: "icmp echo", addrs: dual, gws: []string{gw4, gw6}, cfg: Config{ICMP: true}},
		{name: "gateway skipped", addrs: v4, gws: []string{"10.1.2.99"}, cfg: Config{SkipGateway: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSegment(t)
			gw := s.attach("gw", false, gwAddr...)
			gwFrames := gw.capture()
			pod := s.attach("pod", tc.dad, tc.addrs...)
			req := request(pod, tc.addrs, tc.gws...)
			req.Announce = true
			if _, err := runCheck(t, tc.cfg, req); err != nil {
				t.Fatalf("Run: %v", err)
			}
			// The gateway saw the announcements and, before them (without
			// ICMP), only ARP packets from 0.0.0.0: no neighbour learnt a
			// pod address from the checks.
			for _, a := range tc.addrs {
				addr := netip.MustParsePrefix(a).Addr()
				if !announced(gwFrames, addr, pod.mac, 2*time.Second) {
					t.Errorf("the gateway saw no announcement of %s at %s", addr, pod.mac)
				}
				if early := earlyClaims(gwFrames(), addr, pod.mac); addr.Is4() && !tc.cfg.ICMP && len(early) > 0 {
					t.Errorf("ARP packets naming a sender address before the announcement: %+v", early)
				}
			}
		})
	}
}

// announced reports whether the captured frames hold, within wait, an
// announcement of a at mac: a gratuitous ARP or an unsolicited neighbour
// advertisement.
func announced(frames func() [][]byte, a netip.Addr, mac net.HardwareAddr, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for {
		if slices.ContainsFunc(frames(), func(f []byte) bool { return isAnnouncement(f, a, mac) }) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func isAnnouncement(f []byte, a netip.Addr, mac net.HardwareAddr) bool {
	if p, ok := parseARP(f); ok {
		return p.op == arpRequest && p.senderIP == a && p.targetIP == a && bytes.Equal(p.senderMAC, mac)
	}
	if p, ok := parseNDP(f); ok {
		return p.typ == icmpv6NA && p.target == a && p.dst == allNodes && p.flags&naFlagOverride != 0 && bytes.Equal(p.mac(), mac)
	}
	return false
}

// earlyClaims lists the ARP packets from mac that name a sender address
// before the first announcement of a: each told the neighbours that a is at
// mac before the checks were done.
func earlyClaims(frames [][]byte, a netip.Addr, mac net.HardwareAddr) []arpPacket {
	var out []arpPacket
	for _, f := range frames {
		if isAnnouncement(f, a, mac) {
			break
		}
		if p, ok := parseARP(f); ok && bytes.Equal(p.senderMAC, mac) && !p.senderIP.IsUnspecified() {
			out = append(out, p)
		}
	}
	return out
}

func TestChecker_Run_Conflict(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		addrs  []string
		holder string // the address the other namespace holds
		want   string // with %s for the holder's MAC
	}{
		{name: "ipv4", addrs: v4, holder: "10.1.2.3/24", want: "IP 10.1.2.3 on eth0 is already in use by %s"},
		{name: "ipv6", addrs: dual, holder: "fd00:1:2::3/64", want: "IP fd00:1:2::3 on eth0 is already in use by %s"},
		{name: "ipv4 of two", addrs: []string{"10.1.2.4/24", "10.1.2.3/24"}, holder: "10.1.2.3/24", want: "IP 10.1.2.3 on eth0 is already in use by %s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSegment(t)
			s.attach("gw", false, gwAddr...)
			other := s.attach("other", false, tc.holder)
			pod := s.attach("pod", false, tc.addrs...)
			watch := s.attach("watch", false)
			watchFrames := watch.capture()
			req := request(pod, tc.addrs, gw4)
			req.Announce = true
			// A long window: a conflict must end it at once.
			took, err := runCheck(t, Config{ConflictWindow: 5 * time.Second}, req)
			var ce *ConflictError
			if !errors.As(err, &ce) {
				t.Fatalf("Run = %v, want a *ConflictError", err)
			}
			if want := fmt.Sprintf(tc.want, other.mac); err.Error() != want {
				t.Errorf("error %q, want %q", err, want)
			}
			if took > 3*time.Second {
				t.Errorf("a conflict took %s to report with a 5s window: it must end the wait", took)
			}
			// Nothing was announced.
			for _, a := range tc.addrs {
				addr := netip.MustParsePrefix(a).Addr()
				if announced(watchFrames, addr, pod.mac, 300*time.Millisecond) {
					t.Errorf("%s was announced despite the conflict", addr)
				}
			}
		})
	}
}

func TestChecker_Run_KernelDADConflict(t *testing.T) {
	t.Parallel()
	s := newSegment(t)
	s.attach("gw", false, gwAddr...)
	other := s.attach("other", false, "fd00:1:2::3/64")
	pod := s.attach("pod", true, "fd00:1:2::3/64")
	_, err := runCheck(t, Config{}, request(pod, []string{"fd00:1:2::3/64"}, gw6))
	want := "IP fd00:1:2::3 on eth0 is already in use by " + other.mac.String()
	if err == nil || err.Error() != want {
		t.Fatalf("Run = %v, want %q", err, want)
	}
}

func TestChecker_Run_Unreachable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		addrs []string
		gws   []string
		cfg   Config
		// breakIt makes the gateway (or target) fail.
		breakIt func(gw, tgt *node)
		want    string
	}{
		{
			name: "gateway down", addrs: v4, gws: []string{gw4},
			breakIt: func(gw, _ *node) { gw.down() },
			want:    "gateway 10.1.2.1 unreachable from eth0 after 3 tries (ARP: no reply)",
		},
		{
			name: "gateway address removed", addrs: dual, gws: []string{gw4, gw6},
			breakIt: func(gw, _ *node) { gw.delAddr("10.1.2.1/24") },
			want:    "gateway 10.1.2.1 unreachable from eth0 after 3 tries (ARP: no reply)",
		},
		{
			name: "ipv6 gateway address removed", addrs: dual, gws: []string{gw4, gw6},
			breakIt: func(gw, _ *node) { gw.delAddr("fd00:1:2::1/64") },
			want:    "gateway fd00:1:2::1 unreachable from eth0 after 3 tries (NDP: no reply)",
		},
		{
			name: "gateway ignores echo", addrs: v4, gws: []string{gw4}, cfg: Config{ICMP: true, Tries: 2},
			breakIt: func(gw, _ *node) { gw.sysctl("net/ipv4/icmp_echo_ignore_all", "1") },
			want:    "gateway 10.1.2.1 unreachable from eth0 after 2 tries (ICMP echo: no reply)",
		},
		{
			name: "target down", addrs: v4, gws: []string{gw4}, cfg: Config{Targets: []Target{{Addr: netip.MustParseAddr("10.1.2.9")}}},
			breakIt: func(_, tgt *node) { tgt.down() },
			want:    "target 10.1.2.9 unreachable from eth0 after 3 tries (ARP: no reply)",
		},
		{
			name: "ipv6 target down", addrs: dual, gws: []string{gw4, gw6}, cfg: Config{Targets: []Target{{Addr: netip.MustParseAddr("fd00:1:2::9")}}},
			breakIt: func(_, tgt *node) { tgt.down() },
			want:    "target fd00:1:2::9 unreachable from eth0 after 3 tries (NDP: no reply)",
		},
		{
			name: "tcp target refuses", addrs: v4, gws: []string{gw4}, cfg: Config{Tries: 1, Targets: []Target{{Addr: netip.MustParseAddr("10.1.2.9"), Port: 53}}},
			breakIt: func(*node, *node) {},
			want:    "target 10.1.2.9:53 unreachable from eth0 after 1 try (TCP: connection refused)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSegment(t)
			gw := s.attach("gw", false, gwAddr...)
			tgt := s.attach("tgt", false, "10.1.2.9/24", "fd00:1:2::9/64")
			pod := s.attach("pod", false, tc.addrs...)
			tc.breakIt(gw, tgt)
			_, err := runCheck(t, tc.cfg, request(pod, tc.addrs, tc.gws...))
			var ue *UnreachableError
			if !errors.As(err, &ue) {
				t.Fatalf("Run = %v, want an *UnreachableError", err)
			}
			if err.Error() != tc.want {
				t.Errorf("error %q,\nwant  %q", err, tc.want)
			}
		})
	}
}

func TestChecker_Run_Targets(t *testing.T) {
	t.Parallel()
	s := newSegment(t)
	s.attach("gw", false, gwAddr...)
	tgt := s.attach("tgt", false, "10.1.2.9/24", "fd00:1:2::9/64")
	pod := s.attach("pod", false, dual...)
	var ln net.Listener
	err := tgt.ns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", "[::]:5353")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	var targets []Target
	for _, s := range []string{"10.1.2.9", "fd00:1:2::9", "10.1.2.9:5353", "[fd00:1:2::9]:5353"} {
		tg, err := ParseTarget(s)
		if err != nil {
			t.Fatal(err)
		}
		targets = append(targets, tg)
	}
	if _, err := runCheck(t, Config{ICMP: true, Targets: targets}, request(pod, dual, gw4, gw6)); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestChecker_Run_Waits: a healthy run waits out the conflict window but
// not the gateway's timeout, as the gateway's reply ends its wait.
func TestChecker_Run_Waits(t *testing.T) {
	t.Parallel()
	s := newSegment(t)
	s.attach("gw", false, gwAddr...)
	pod := s.attach("pod", false, dual...)
	took, err := runCheck(t, Config{ConflictWindow: 300 * time.Millisecond, Timeout: 10 * time.Second}, request(pod, dual, gw4, gw6))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if took < 300*time.Millisecond {
		t.Errorf("Run took %s: it must wait out the 300ms conflict window", took)
	}
	if took > 5*time.Second {
		t.Errorf("Run took %s: the gateway's reply must end its 10s wait", took)
	}
}

func TestChecker_Run_Interface(t *testing.T) {
	t.Parallel()
	s := newSegment(t)
	pod := s.attach("pod", false, v4...)
	req := request(pod, v4, gw4)
	req.IfName = "eth9"
	if _, err := runCheck(t, Config{}, req); err == nil || err.Error() != "interface eth9: Link not found" {
		t.Errorf("missing interface: Run = %v", err)
	}
	pod.down()
	if _, err := runCheck(t, Config{}, request(pod, v4, gw4)); err == nil || err.Error() != "interface eth0 is down" {
		t.Errorf("interface down: Run = %v", err)
	}
}

// TestChecker_Run_LinkLocalGateway: an IPv6 gateway given by its
// link-local address (as routers advertise themselves) is on-link.
func TestChecker_Run_LinkLocalGateway(t *testing.T) {
	t.Parallel()
	s := newSegment(t)
	gw := s.attach("gw", false, gwAddr...)
	pod := s.attach("pod", false, dual...)
	var ll string
	deadline := time.Now().Add(5 * time.Second)
	for ll == "" {
		addrs, err := gw.h.AddrList(gw.eth0, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if a.IP.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
				ll = a.IP.String()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway has no usable link-local address: %v", addrs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := runCheck(t, Config{ICMP: true}, request(pod, dual, gw4, ll)); err != nil {
		t.Fatalf("Run with gateway %s: %v", ll, err)
	}
	gw.down()
	_, err := runCheck(t, Config{}, request(pod, dual, ll))
	if want := "gateway " + ll + " unreachable from eth0 after 3 tries (NDP: no reply)"; err == nil || err.Error() != want {
		t.Fatalf("Run with the gateway down = %v, want %q", err, want)
	}
}

// TestChecker_Run_HostGatewayTentative: the bridge plugin has just put the
// IPv6 gateway on the bridge, in the namespace the plugin runs in, and the
// kernel's duplicate address detection holds it (here at least 3 s): the
// check waits until the gateway answers instead of failing the pod's first
// ADD, as it does when it cannot see that the gateway is the host's own.
func TestChecker_Run_HostGatewayTentative(t *testing.T) {
	t.Parallel()
	s := newSegment(t)
	addrs := []string{"fd00:1:2::3/64"}
	pod := s.attach("pod", false, addrs...)
	err := s.ns.Do(func(ns.NetNS) error {
		for name, v := range map[string]string{"conf/br0/accept_dad": "1", "neigh/br0/retrans_time_ms": "3000"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/"+name, []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	a, err := netlink.ParseAddr(gw6 + "/64")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.h.AddrAdd(s.br, a); err != nil {
		t.Fatalf("add the gateway to the bridge: %v", err)
	}
	added := time.Now()
	list, err := s.h.AddrList(s.br, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(list, func(l netlink.Addr) bool { return l.IP.Equal(a.IP) && l.Flags&unix.IFA_F_TENTATIVE != 0 }) {
		t.Fatalf("the bridge's %s is not tentative: %v", gw6, list)
	}

	blind := mustChecker(t, Config{})
	blind.hostNS = pod.ns // the gateway is not among its addresses: no wait
	err = blind.Run(context.Background(), request(pod, addrs, gw6))
	if want := "gateway " + gw6 + " unreachable from eth0 after 3 tries (NDP: no reply)"; err == nil || err.Error() != want {
		t.Fatalf("without the wait, Run = %v; want %q", err, want)
	}
	if since := time.Since(added); since >= 3*time.Second {
		t.Fatalf("the run without the wait ended %s after the address was added, past the detection", since)
	}

	c := mustChecker(t, Config{})
	c.hostNS = s.ns
	if err := c.Run(context.Background(), request(pod, addrs, gw6)); err != nil {
		t.Fatalf("Run while the bridge's gateway is tentative: %v", err)
	}
	if since := time.Since(added); since < 3*time.Second {
		t.Errorf("Run passed %s after the gateway was added, before its detection could end", since)
	}
}
