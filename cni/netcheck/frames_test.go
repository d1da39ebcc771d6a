package netcheck

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/net/bpf"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

var podMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc}

func TestARP_ProbeAndAnnouncement(t *testing.T) {
	ip := netip.MustParseAddr("10.1.2.3")
	for _, tc := range []struct {
		name     string
		frame    []byte
		senderIP netip.Addr
	}{
		{name: "probe", frame: arpProbe(podMAC, ip), senderIP: netip.IPv4Unspecified()},
		{name: "announcement", frame: arpAnnouncement(podMAC, ip), senderIP: ip},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !bytes.Equal(tc.frame[0:6], broadcastMAC) || !bytes.Equal(tc.frame[6:12], podMAC) {
				t.Errorf("Ethernet header % x", tc.frame[:14])
			}
			p, ok := parseARP(tc.frame)
			if !ok {
				t.Fatal("parseARP refused the frame")
			}
			want := arpPacket{op: arpRequest, senderMAC: podMAC, senderIP: tc.senderIP, targetMAC: zeroMAC, targetIP: ip}
			if p.op != want.op || !bytes.Equal(p.senderMAC, want.senderMAC) || p.senderIP != want.senderIP ||
				!bytes.Equal(p.targetMAC, want.targetMAC) || p.targetIP != want.targetIP {
				t.Errorf("parsed %+v, want %+v", p, want)
			}
		})
	}
	if _, ok := parseARP(arpProbe(podMAC, ip)[:40]); ok {
		t.Error("parseARP accepted a short frame")
	}
}

func TestNDP_Frames(t *testing.T) {
	a := netip.MustParseAddr("fd00:1:2::3")
	ll := netip.MustParseAddr("fe80::5054:ff:feaa:bbcc")
	if got, want := solicitedNode(a), netip.MustParseAddr("ff02::1:ff00:3"); got != want {
		t.Errorf("solicitedNode = %s, want %s", got, want)
	}
	for _, tc := range []struct {
		name   string
		frame  []byte
		want   ndpPacket
		ethDst string
	}{
		{
			name: "DAD probe", frame: ndpDADProbe(podMAC, a), ethDst: "33:33:ff:00:00:03",
			want: ndpPacket{typ: icmpv6NS, src: netip.IPv6Unspecified(), dst: netip.MustParseAddr("ff02::1:ff00:3"), target: a},
		},
		{
			name: "solicitation", frame: ndpSolicit(podMAC, ll, a), ethDst: "33:33:ff:00:00:03",
			want: ndpPacket{typ: icmpv6NS, src: ll, dst: netip.MustParseAddr("ff02::1:ff00:3"), target: a, linkAddr: podMAC},
		},
		{
			name: "advertisement", frame: ndpAdvertisement(podMAC, a), ethDst: "33:33:00:00:00:01",
			want: ndpPacket{typ: icmpv6NA, src: a, dst: allNodes, target: a, flags: naFlagOverride, linkAddr: podMAC},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := net.HardwareAddr(tc.frame[0:6]).String(); got != tc.ethDst {
				t.Errorf("Ethernet destination %s, want %s", got, tc.ethDst)
			}
			p, ok := parseNDP(tc.frame)
			if !ok {
				t.Fatal("parseNDP refused the frame")
			}
			if p.typ != tc.want.typ || p.src != tc.want.src || p.dst != tc.want.dst || p.target != tc.want.target ||
				p.flags != tc.want.flags || !bytes.Equal(p.linkAddr, tc.want.linkAddr) || !bytes.Equal(p.ethSrc, podMAC) {
				t.Errorf("parsed %+v, want %+v", p, tc.want)
			}
			// The checksum agrees with golang.org/x/net/icmp's.
			msg := tc.frame[etherHdrLen+ipv6HdrLen:]
			var typ icmp.Type = ipv6.ICMPTypeNeighborSolicitation
			if p.typ == icmpv6NA {
				typ = ipv6.ICMPTypeNeighborAdvertisement
			}
			body := &icmp.RawBody{Data: append([]byte(nil), msg[4:]...)}
			ref, err := (&icmp.Message{Type: typ, Body: body}).Marshal(icmp.IPv6PseudoHeader(tc.want.src.AsSlice(), tc.want.dst.AsSlice()))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := binary.BigEndian.Uint16(msg[2:4]), binary.BigEndian.Uint16(ref[2:4]); got != want {
				t.Errorf("checksum %#04x, x/net/icmp says %#04x", got, want)
			}
		})
	}

	bad := ndpAdvertisement(podMAC, a)
	bad[etherHdrLen+7] = 64 // hop limit: not from the link
	if _, ok := parseNDP(bad); ok {
		t.Error("parseNDP accepted hop limit 64")
	}
	bad = ndpAdvertisement(podMAC, a)
	bad[len(bad)-1] ^= 0xff
	if _, ok := parseNDP(bad); ok {
		t.Error("parseNDP accepted a bad checksum")
	}
	if _, ok := parseNDP(withOptions(ndpAdvertisement(podMAC, a), []byte{ndpOptTargetLL})); ok {
		t.Error("parseNDP accepted an option type without a length")
	}
	ns := withChecksum(set(ndpDADProbe(podMAC, a), etherHdrLen+ipv6HdrLen+4, 0xff))
	if p, ok := parseNDP(ns); !ok || p.flags != 0 {
		t.Errorf("parseNDP of a solicitation with its reserved field set: flags %#x, %v; want 0, true", p.flags, ok)
	}
}

func TestClaims(t *testing.T) {
	a := netip.MustParseAddr("fd00:1:2::3")
	other := net.HardwareAddr{2, 0, 0, 0, 0, 9}
	for _, tc := range []struct {
		name  string
		frame []byte
		addr  netip.Addr
		want  net.HardwareAddr
	}{
		{name: "ARP reply from the address", addr: netip.MustParseAddr("10.1.2.3"), want: other,
			frame: marshalARP(other, podMAC, arpPacket{op: arpReply, senderMAC: other, senderIP: netip.MustParseAddr("10.1.2.3"), targetMAC: podMAC, targetIP: netip.IPv4Unspecified()})},
		{name: "ARP probe for the address claims nothing", addr: netip.MustParseAddr("10.1.2.3"),
			frame: arpProbe(other, netip.MustParseAddr("10.1.2.3"))},
		{name: "advertisement of the address", addr: a, want: other, frame: ndpAdvertisement(other, a)},
		{name: "solicitation from the address", addr: a, want: other, frame: ndpSolicit(other, a, netip.MustParseAddr("fd00:1:2::1"))},
		{name: "DAD probe for the address claims nothing", addr: a, frame: ndpDADProbe(other, a)},
		{name: "advertisement of another address", addr: a, frame: ndpAdvertisement(other, netip.MustParseAddr("fd00:1:2::4"))},
		{name: "ARP probe claims nothing for 0.0.0.0", addr: netip.IPv4Unspecified(), frame: arpProbe(other, netip.MustParseAddr("10.1.2.3"))},
		{name: "DAD probe claims nothing for ::", addr: netip.IPv6Unspecified(), frame: ndpDADProbe(other, a)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mac, ok := claims(tc.frame, tc.addr)
			if ok != (tc.want != nil) || !bytes.Equal(mac, tc.want) {
				t.Errorf("claims = %s, %v; want %s", mac, ok, tc.want)
			}
		})
	}
}

func TestNDPFilter(t *testing.T) {
	vm, err := bpf.NewVM(ndpFilter)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr("fd00:1:2::3")
	echo := ndpAdvertisement(podMAC, a)
	echo[etherHdrLen+ipv6HdrLen] = 128 // ICMPv6 echo request
	udp := ndpAdvertisement(podMAC, a)
	udp[etherHdrLen+6] = 17
	ipv4 := arpProbe(podMAC, netip.MustParseAddr("10.1.2.3"))
	ipv4[12], ipv4[13] = 0x08, 0x00
	for _, tc := range []struct {
		name  string
		frame []byte
		want  bool
	}{
		{name: "ARP", frame: arpProbe(podMAC, netip.MustParseAddr("10.1.2.3")), want: true},
		{name: "neighbour solicitation", frame: ndpDADProbe(podMAC, a), want: true},
		{name: "neighbour advertisement", frame: ndpAdvertisement(podMAC, a), want: true},
		{name: "ICMPv6 echo", frame: echo},
		{name: "UDP over IPv6", frame: udp},
		{name: "IPv4", frame: ipv4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := vm.Run(tc.frame)
			if err != nil {
				t.Fatal(err)
			}
			if got := n > 0; got != tc.want {
				t.Errorf("filter accepts %v, want %v", got, tc.want)
			}
		})
	}
}
