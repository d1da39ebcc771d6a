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

// The parsers of frames received from the network in the pod's namespace
// (parseARP, parseNDP, and claims, which decides whether a frame says an
// address is in use). Each fuzz input is used twice: as a received frame,
// and as the fields of a frame the package builds, which must parse back to
// those fields.

var (
	otherMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x09}
	fuzzV4   = netip.MustParseAddr("10.1.2.3")
	fuzzV6   = netip.MustParseAddr("fd00:1:2::3")
	fuzzLL   = netip.MustParseAddr("fe80::5054:ff:feaa:bbcc")
)

// ndpOffsets of an untagged Ethernet frame holding IPv6 and ICMPv6.
const (
	offIPv6    = etherHdrLen
	offICMP    = etherHdrLen + ipv6HdrLen
	offTarget  = offICMP + 8
	offOptions = offICMP + ndpMsgLen
)

// withChecksum returns a copy of frame whose ICMPv6 checksum is the one
// golang.org/x/net/icmp computes, when the frame is long enough to carry
// the IPv6 payload length it claims; else an unchanged copy. Without it the
// fuzzer would almost never get past parseNDP's checksum to the options.
func withChecksum(frame []byte) []byte {
	b := append([]byte(nil), frame...)
	if len(b) < offICMP+4 {
		return b
	}
	ip := b[offIPv6:]
	plen := int(binary.BigEndian.Uint16(ip[4:6]))
	if plen < 4 || ipv6HdrLen+plen > len(ip) {
		return b
	}
	m := ip[ipv6HdrLen : ipv6HdrLen+plen]
	msg := &icmp.Message{Type: ipv6.ICMPType(m[0]), Code: int(m[1]), Body: &icmp.RawBody{Data: append([]byte(nil), m[4:]...)}}
	wire, err := msg.Marshal(icmp.IPv6PseudoHeader(net.IP(ip[8:24]), net.IP(ip[24:40])))
	if err != nil {
		return b
	}
	copy(m[2:4], wire[2:4])
	return b
}

// withOptions returns frame (an NDP frame built without options) with opts
// as its options, the payload length and checksum fixed.
func withOptions(frame, opts []byte) []byte {
	b := append(append([]byte(nil), frame...), opts...)
	binary.BigEndian.PutUint16(b[offIPv6+4:offIPv6+6], uint16(len(b)-offICMP))
	return withChecksum(b)
}

// set returns a copy of frame with b[i] = v.
func set(frame []byte, i int, v byte) []byte {
	b := append([]byte(nil), frame...)
	b[i] = v
	return b
}

// filterAccepts runs the packet socket's kernel filter on frame.
func filterAccepts(t *testing.T, vm *bpf.VM, frame []byte) bool {
	t.Helper()
	n, err := vm.Run(frame)
	if err != nil {
		t.Fatalf("socket filter: %v", err)
	}
	return n > 0
}

func newFilterVM(f *testing.F) *bpf.VM {
	vm, err := bpf.NewVM(ndpFilter)
	if err != nil {
		f.Fatal(err)
	}
	return vm
}

// fields is a fixed-size view of a fuzz input, zero-padded, from which the
// round-trip properties take the fields of frames to build.
type fields [96]byte

func fieldsOf(in []byte) *fields {
	var f fields
	copy(f[:], in)
	return &f
}

func (f *fields) mac(i int) net.HardwareAddr { return net.HardwareAddr(bytes.Clone(f[i : i+6])) }
func (f *fields) v4(i int) netip.Addr        { return netip.AddrFrom4([4]byte(f[i : i+4])) }
func (f *fields) v6(i int) netip.Addr        { return netip.AddrFrom16([16]byte(f[i : i+16])) }
func (f *fields) u16(i int) uint16           { return binary.BigEndian.Uint16(f[i:]) }
func (f *fields) u32(i int) uint32           { return binary.BigEndian.Uint32(f[i:]) }
func (f *fields) bit(i int, mask byte) bool  { return f[i]&mask != 0 }

// sameARP and sameNDP compare parsed packets field by field.
func sameARP(a, b arpPacket) bool {
	return a.op == b.op && a.senderIP == b.senderIP && a.targetIP == b.targetIP && bytes.Equal(a.senderMAC, b.senderMAC) && bytes.Equal(a.targetMAC, b.targetMAC)
}

func sameNDP(a, b ndpPacket) bool {
	return a.typ == b.typ && a.src == b.src && a.dst == b.dst && a.target == b.target && a.flags == b.flags && bytes.Equal(a.ethSrc, b.ethSrc) && bytes.Equal(a.linkAddr, b.linkAddr)
}

// cloneARP and cloneNDP copy a packet's slices.
func cloneARP(p arpPacket) arpPacket {
	p.senderMAC, p.targetMAC = bytes.Clone(p.senderMAC), bytes.Clone(p.targetMAC)
	return p
}

func cloneNDP(p ndpPacket) ndpPacket {
	p.ethSrc, p.linkAddr = bytes.Clone(p.ethSrc), bytes.Clone(p.linkAddr)
	return p
}

// clobber overwrites b, as the packet socket's next read does its buffer.
func clobber(b []byte) {
	for i := range b {
		b[i] ^= 0xff
	}
}

func arpSeeds() [][]byte {
	reply := marshalARP(otherMAC, podMAC, arpPacket{op: arpReply, senderMAC: otherMAC, senderIP: fuzzV4, targetMAC: podMAC, targetIP: netip.IPv4Unspecified()})
	probe := arpProbe(podMAC, fuzzV4)
	return [][]byte{
		probe,
		arpAnnouncement(podMAC, fuzzV4),
		reply,
		append(bytes.Clone(reply), make([]byte, 60-len(reply))...), // padded to Ethernet's minimum
		reply[:etherHdrLen+arpLen-1],                               // truncated
		reply[:etherHdrLen],
		{},
		set(reply, 12, 0x86), // ethertype
		set(reply, 15, 6),    // hardware type IEEE 802
		set(reply, 16, 0x86), // protocol IPv6
		set(reply, 18, 16),   // hardware address length
		set(reply, 19, 16),   // protocol address length
		set(reply, 21, 3),    // opcode RARP request
	}
}

// FuzzParseARP: an accepted frame holds a whole Ethernet/IPv4 ARP header
// and the builder writes exactly its bytes back from the parsed fields;
// Ethernet padding changes nothing; the socket filter passes it; the result
// does not share memory with the frame. Any ARP packet the package builds
// parses back to its fields.
func FuzzParseARP(f *testing.F) {
	for _, s := range arpSeeds() {
		f.Add(s)
	}
	vm := newFilterVM(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		frame := bytes.Clone(in)
		p, ok := parseARP(frame)
		if ok {
			// The Ethernet/IPv4 ARP header is all there and every field is
			// read: the builder writes the same bytes back.
			if len(frame) < etherHdrLen+arpLen {
				t.Fatalf("accepted a %d-byte frame", len(frame))
			}
			if back := marshalARP(frame[6:12], frame[0:6], p); !bytes.Equal(back, frame[:etherHdrLen+arpLen]) {
				t.Fatalf("parsed %+v, built back\n% x\nfrom\n% x", p, back, frame[:etherHdrLen+arpLen])
			}
			if q, ok := parseARP(frame[:etherHdrLen+arpLen]); !ok || !sameARP(p, q) {
				t.Fatalf("Ethernet padding changed the result: %+v, without it %+v %v", p, q, ok)
			}
			if !filterAccepts(t, vm, frame) {
				t.Fatal("the socket filter drops an ARP frame parseARP accepts")
			}
			// The packet socket reuses its buffer: the result must not
			// point into it.
			keep := cloneARP(p)
			clobber(frame)
			if !sameARP(p, keep) {
				t.Fatalf("the result shares memory with the frame: %+v became %+v", keep, p)
			}
		}

		// A frame the package builds parses back to its fields.
		fl := fieldsOf(in)
		want := arpPacket{op: fl.u16(0), senderMAC: fl.mac(2), senderIP: fl.v4(8), targetMAC: fl.mac(12), targetIP: fl.v4(18)}
		built := marshalARP(fl.mac(22), fl.mac(28), want)
		if got, ok := parseARP(built); !ok || !sameARP(got, want) {
			t.Fatalf("built %+v, parsed %+v %v", want, got, ok)
		}
		if !filterAccepts(t, vm, built) {
			t.Fatal("the socket filter drops an ARP frame the package builds")
		}
	})
}

func ndpSeeds() [][]byte {
	sol := ndpSolicit(podMAC, fuzzLL, fuzzV6)
	adv := ndpAdvertisement(otherMAC, fuzzV6)
	bareNA := marshalNDP(otherMAC, podMAC, ndpPacket{typ: icmpv6NA, src: fuzzV6, dst: fuzzLL, target: fuzzV6, flags: 1<<30 | naFlagOverride})
	bareNS := ndpDADProbe(podMAC, fuzzV6)
	targetLL := []byte{ndpOptTargetLL, 1, 0x02, 0, 0, 0, 0, 0x09}
	nonce := []byte{14, 1, 1, 2, 3, 4, 5, 6}
	var unknownType [135]byte
	return [][]byte{
		bareNS,
		sol,
		adv,
		bareNA,
		withOptions(bareNA, append(bytes.Clone(nonce), targetLL...)),                             // unknown option first
		withOptions(bareNS, nonce),                                                               // DAD probe with a nonce (RFC 7527)
		withOptions(bareNA, append(bytes.Clone(targetLL), targetLL[:4]...)),                      // truncated second option
		withOptions(bareNA, []byte{ndpOptTargetLL, 0, 0, 0, 0, 0, 0, 0}),                         // zero-length option
		withOptions(bareNA, []byte{ndpOptTargetLL, 2, 0x02, 0, 0, 0, 0, 0x09}),                   // longer than the frame
		withOptions(bareNA, []byte{ndpOptTargetLL, 2, 2, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0}), // 16-byte option
		withOptions(bareNA, []byte{ndpOptTargetLL}),                                              // a lone option type
		withOptions(bareNA, unknownType[:]),                                                      // zeros: option type 0, length 0
		append(bytes.Clone(adv), 0, 0, 0, 0),                                                     // Ethernet bytes past the IPv6 payload
		adv[:offOptions-1],                                                                       // truncated
		adv[:offICMP],
		{},
		set(adv, offICMP+1, 1), // code 1
		withChecksum(set(adv, offICMP+1, 1)),
		withChecksum(set(adv, offICMP, 134)),           // router advertisement
		withChecksum(set(adv, offICMP, 128)),           // echo request
		set(adv, offIPv6+7, 64),                        // hop limit 64: not from the link
		set(adv, offIPv6+6, 17),                        // next header UDP
		set(adv, offIPv6, 0x40),                        // IP version 4
		set(adv, 12, 0x08),                             // ethertype
		set(adv, len(adv)-1, 0),                        // bad checksum
		withChecksum(set(adv, offIPv6+5, ndpMsgLen-1)), // payload length too short
		withChecksum(set(adv, offIPv6+5, 0xff)),        // payload length past the frame
	}
}

// FuzzParseNDP (with the checksum fixed up or not, see withChecksum): an
// accepted frame announces an IPv6 payload that is in the frame, has hop
// limit 255, code 0, a checksum x/net/icmp agrees with, and options of
// non-zero length that fill the payload; every field is the frame's; bytes
// past the payload change nothing; the socket filter passes it; built
// again, it parses to the same; the result does not share memory with the
// frame. Any solicitation or advertisement the package builds parses back
// to its fields.
func FuzzParseNDP(f *testing.F) {
	for _, s := range ndpSeeds() {
		f.Add(s, false)
		f.Add(s, true)
	}
	vm := newFilterVM(f)
	f.Fuzz(func(t *testing.T, in []byte, fixChecksum bool) {
		frame := bytes.Clone(in)
		if fixChecksum {
			frame = withChecksum(frame)
		}
		p, ok := parseNDP(frame)
		if ok {
			checkNDP(t, vm, frame, p)
		}

		// A frame the package builds parses back to its fields.
		fl := fieldsOf(in)
		want := ndpPacket{typ: icmpv6NS, ethSrc: fl.mac(0), src: fl.v6(12), dst: fl.v6(28), target: fl.v6(44)}
		if fl.bit(6, 1) {
			want.typ, want.flags = icmpv6NA, fl.u32(60)
		}
		if fl.bit(6, 2) {
			want.linkAddr = fl.mac(64)
		}
		built := marshalNDP(want.ethSrc, fl.mac(70), want)
		got, ok := parseNDP(built)
		if !ok || !sameNDP(got, want) {
			t.Fatalf("built %+v, parsed %+v %v", want, got, ok)
		}
		if !bytes.Equal(withChecksum(built), built) {
			t.Fatal("the built frame's checksum is not the one x/net/icmp computes")
		}
		if !filterAccepts(t, vm, built) {
			t.Fatal("the socket filter drops an NDP frame the package builds")
		}
	})
}

// checkNDP asserts what an accepted NDP frame must be.
func checkNDP(t *testing.T, vm *bpf.VM, frame []byte, p ndpPacket) {
	t.Helper()
	// Lengths are consistent: the IPv6 payload the header announces is in
	// the frame and holds the message and whole options.
	if len(frame) < offOptions {
		t.Fatalf("accepted a %d-byte frame", len(frame))
	}
	end := offICMP + int(binary.BigEndian.Uint16(frame[offIPv6+4:]))
	if end < offOptions || end > len(frame) {
		t.Fatalf("accepted an IPv6 payload of %d bytes in a %d-byte frame", end-offICMP, len(frame))
	}
	if !bytes.Equal(withChecksum(frame), frame) {
		t.Fatal("accepted a checksum x/net/icmp disagrees with")
	}
	if frame[offIPv6+7] != ndpHopLimit || frame[offICMP+1] != 0 {
		t.Fatalf("accepted hop limit %d, code %d", frame[offIPv6+7], frame[offICMP+1])
	}
	// Every field is the frame's.
	wantFlags := uint32(0)
	if p.typ == icmpv6NA {
		wantFlags = binary.BigEndian.Uint32(frame[offICMP+4:])
	}
	if p.typ != frame[offICMP] || (p.typ != icmpv6NS && p.typ != icmpv6NA) || !bytes.Equal(p.ethSrc, frame[6:12]) ||
		p.src != netip.AddrFrom16([16]byte(frame[offIPv6+8:])) || p.dst != netip.AddrFrom16([16]byte(frame[offIPv6+24:])) ||
		p.target != netip.AddrFrom16([16]byte(frame[offTarget:])) || p.flags != wantFlags {
		t.Fatalf("parsed %+v from\n% x", p, frame)
	}
	// The options tile the rest of the payload, none of length zero; the
	// link-layer address is the last option of the type the message
	// carries, or nil.
	want := byte(ndpOptSourceLL)
	if p.typ == icmpv6NA {
		want = ndpOptTargetLL
	}
	var ll net.HardwareAddr
	for opts := frame[offOptions:end]; len(opts) > 0; {
		if len(opts) < 2 || opts[1] == 0 || int(opts[1])*8 > len(opts) {
			t.Fatalf("accepted options % x", frame[offOptions:end])
		}
		if opts[0] == want {
			ll = net.HardwareAddr(opts[2:8])
		}
		opts = opts[int(opts[1])*8:]
	}
	if !bytes.Equal(p.linkAddr, ll) || (p.linkAddr != nil && len(p.linkAddr) != 6) {
		t.Fatalf("link-layer address %v, the options say %v", p.linkAddr, ll)
	}
	if q, ok := parseNDP(frame[:end]); !ok || !sameNDP(p, q) {
		t.Fatalf("bytes past the IPv6 payload changed the result: %+v, without them %+v %v", p, q, ok)
	}
	if !filterAccepts(t, vm, frame) {
		t.Fatal("the socket filter drops an NDP frame parseNDP accepts")
	}
	// Built again from what was parsed, it parses to the same.
	if q, ok := parseNDP(marshalNDP(p.ethSrc, frame[0:6], p)); !ok || !sameNDP(p, q) {
		t.Fatalf("parsed %+v, built and parsed again %+v %v", p, q, ok)
	}
	// The packet socket reuses its buffer: the result must not point
	// into it.
	keep := cloneNDP(p)
	clobber(frame)
	if !sameNDP(p, keep) {
		t.Fatalf("the result shares memory with the frame: %+v became %+v", keep, p)
	}
}

// FuzzClaims: a frame that claims an address (a conflict, or a gateway's
// answer) carries that address where the protocol puts it and the MAC
// reported; the unspecified address is never claimed; the socket filter
// passes the frame. The package's own probes never claim the address they
// probe; its announcements and solicitations claim their address at their
// sender's MAC.
func FuzzClaims(f *testing.F) {
	v4, v6 := fuzzV4.AsSlice(), fuzzV6.AsSlice()
	for _, s := range arpSeeds() {
		f.Add(s, v4, false)
		f.Add(s, netip.IPv4Unspecified().AsSlice(), false)
	}
	for _, s := range ndpSeeds() {
		f.Add(s, v6, true)
		f.Add(s, fuzzLL.AsSlice(), false)
		f.Add(s, netip.IPv6Unspecified().AsSlice(), false)
	}
	f.Add(ndpSolicit(otherMAC, fuzzV6, fuzzLL), v6, false)
	vm := newFilterVM(f)
	f.Fuzz(func(t *testing.T, in, addrBytes []byte, fixChecksum bool) {
		addr, valid := netip.AddrFromSlice(addrBytes)
		if !valid {
			return
		}
		frame := bytes.Clone(in)
		if fixChecksum {
			frame = withChecksum(frame)
		}
		mac, ok := claims(frame, addr)
		if ok {
			// What claims an address really carries it, from the MAC
			// reported, in a frame the packet socket receives.
			if len(mac) != 6 || addr.IsUnspecified() {
				t.Fatalf("claims %s at %v", addr, mac)
			}
			if !filterAccepts(t, vm, frame) {
				t.Fatal("the socket filter drops a frame that claims an address")
			}
			a := addr.AsSlice()
			switch {
			case addr.Is4():
				if !bytes.Equal(frame[12:14], []byte{0x08, 0x06}) || !bytes.Equal(frame[28:32], a) || !bytes.Equal(frame[22:28], mac) {
					t.Fatalf("claims %s at %s from\n% x", addr, mac, frame)
				}
			case frame[offICMP] == icmpv6NA:
				if !bytes.Equal(frame[offTarget:offTarget+16], a) {
					t.Fatalf("an advertisement of %s claims %s", net.IP(frame[offTarget:offTarget+16]), addr)
				}
			case frame[offICMP] == icmpv6NS:
				if !bytes.Equal(frame[offIPv6+8:offIPv6+24], a) {
					t.Fatalf("a solicitation from %s claims %s", net.IP(frame[offIPv6+8:offIPv6+24]), addr)
				}
			default:
				t.Fatalf("ICMPv6 type %d claims %s", frame[offICMP], addr)
			}
			if addr.Is6() && !bytes.Equal(frame[6:12], mac) && !bytes.Contains(frame[offOptions:], mac) {
				t.Fatalf("claims %s at %s, a MAC the frame does not carry", addr, mac)
			}
			keep := bytes.Clone(mac)
			clobber(frame)
			if !bytes.Equal(mac, keep) {
				t.Fatal("the MAC shares memory with the frame")
			}
		}

		// What the package sends: a probe or a DAD solicitation for an
		// address claims nothing; an announcement, an advertisement or a
		// solicitation from it claims it at the sender's MAC.
		fl := fieldsOf(in)
		from := fl.mac(0)
		var probe, announce []byte
		if addr.Is4() {
			probe, announce = arpProbe(from, addr), arpAnnouncement(from, addr)
		} else {
			probe, announce = ndpDADProbe(from, addr), ndpAdvertisement(from, addr)
			if m, ok := claims(ndpSolicit(from, addr, fl.v6(6)), addr); ok != !addr.IsUnspecified() || (ok && !bytes.Equal(m, from)) {
				t.Fatalf("a solicitation from %s claims it at %v %v", addr, m, ok)
			}
		}
		if m, ok := claims(probe, addr); ok {
			t.Fatalf("a probe for %s claims it at %s", addr, m)
		}
		if m, ok := claims(announce, addr); ok != !addr.IsUnspecified() || (ok && !bytes.Equal(m, from)) {
			t.Fatalf("an announcement of %s claims it at %v %v, want %s", addr, m, ok, from)
		}
	})
}
