package netcheck

import (
	"encoding/binary"
	"net"
	"net/netip"
)

const (
	ipv6HdrLen     = 40
	protoICMPv6    = 58
	ndpHopLimit    = 255
	icmpv6NS       = 135
	icmpv6NA       = 136
	ndpOptSourceLL = 1
	ndpOptTargetLL = 2
	naFlagOverride = 1 << 29
	ndpMsgLen      = 24 // type, code, checksum, 4 bytes, target
	ndpLLOptLen    = 8
)

var allNodes = netip.MustParseAddr("ff02::1")

// ndpPacket is the part of a neighbour solicitation or advertisement the
// checks read.
type ndpPacket struct {
	typ      uint8 // icmpv6NS or icmpv6NA
	ethSrc   net.HardwareAddr
	src, dst netip.Addr
	target   netip.Addr
	flags    uint32           // NA flags
	linkAddr net.HardwareAddr // source (NS) or target (NA) link-layer address option, or nil
}

// mac is the link-layer address that sent or owns the packet's address:
// the option if present, else the Ethernet source.
func (p ndpPacket) mac() net.HardwareAddr {
	if p.linkAddr != nil {
		return p.linkAddr
	}
	return p.ethSrc
}

// solicitedNode is the solicited-node multicast address of a (RFC 4291).
func solicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	m := [16]byte{0: 0xff, 1: 0x02, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]}
	return netip.AddrFrom16(m)
}

// multicastMAC is the Ethernet address of IPv6 multicast group a (RFC 2464).
func multicastMAC(a netip.Addr) net.HardwareAddr {
	b := a.As16()
	return net.HardwareAddr{0x33, 0x33, b[12], b[13], b[14], b[15]}
}

// marshalNDP builds an Ethernet frame holding p as an IPv6 packet with hop
// limit 255 and a correct ICMPv6 checksum.
func marshalNDP(ethSrc, ethDst net.HardwareAddr, p ndpPacket) []byte {
	icmpLen := ndpMsgLen
	if p.linkAddr != nil {
		icmpLen += ndpLLOptLen
	}
	b := make([]byte, etherHdrLen+ipv6HdrLen+icmpLen)
	copy(b[0:6], ethDst)
	copy(b[6:12], ethSrc)
	binary.BigEndian.PutUint16(b[12:14], etherTypeIPv6)

	ip := b[etherHdrLen:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:6], uint16(icmpLen))
	ip[6] = protoICMPv6
	ip[7] = ndpHopLimit
	src, dst := p.src.As16(), p.dst.As16()
	copy(ip[8:24], src[:])
	copy(ip[24:40], dst[:])

	m := ip[ipv6HdrLen:]
	m[0] = p.typ
	if p.typ == icmpv6NA {
		binary.BigEndian.PutUint32(m[4:8], p.flags)
	}
	t := p.target.As16()
	copy(m[8:24], t[:])
	if p.linkAddr != nil {
		m[24] = ndpOptSourceLL
		if p.typ == icmpv6NA {
			m[24] = ndpOptTargetLL
		}
		m[25] = 1 // in units of 8 bytes
		copy(m[26:32], p.linkAddr)
	}
	binary.BigEndian.PutUint16(m[2:4], icmpv6Checksum(src, dst, m))
	return b
}

// icmpv6Checksum is the ICMPv6 checksum of msg (checksum field zero) with
// the IPv6 pseudo-header (RFC 8200 section 8.1).
func icmpv6Checksum(src, dst [16]byte, msg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	sum += uint32(len(msg)) + protoICMPv6
	add(msg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// parseNDP reads an Ethernet frame; ok is false unless it is a valid
// neighbour solicitation or advertisement (hop limit 255, no extension
// headers, good checksum, options of non-zero length that fill the rest of
// the message, RFC 4861 section 7.1). flags is read from advertisements
// only (a solicitation's field is reserved); the link-layer address is the
// last source (solicitation) or target (advertisement) link-layer option.
func parseNDP(frame []byte) (p ndpPacket, ok bool) {
	if len(frame) < etherHdrLen+ipv6HdrLen+ndpMsgLen || binary.BigEndian.Uint16(frame[12:14]) != etherTypeIPv6 {
		return p, false
	}
	ip := frame[etherHdrLen:]
	if ip[0]>>4 != 6 || ip[6] != protoICMPv6 || ip[7] != ndpHopLimit {
		return p, false
	}
	plen := int(binary.BigEndian.Uint16(ip[4:6]))
	if plen < ndpMsgLen || ipv6HdrLen+plen > len(ip) {
		return p, false
	}
	src, dst := [16]byte(ip[8:24]), [16]byte(ip[24:40])
	m := ip[ipv6HdrLen : ipv6HdrLen+plen]
	if (m[0] != icmpv6NS && m[0] != icmpv6NA) || m[1] != 0 || icmpv6Checksum(src, dst, zeroChecksum(m)) != binary.BigEndian.Uint16(m[2:4]) {
		return p, false
	}
	p.typ = m[0]
	p.ethSrc = net.HardwareAddr(append([]byte(nil), frame[6:12]...))
	p.src, p.dst = netip.AddrFrom16(src), netip.AddrFrom16(dst)
	if p.typ == icmpv6NA {
		p.flags = binary.BigEndian.Uint32(m[4:8])
	}
	p.target = netip.AddrFrom16([16]byte(m[8:24]))
	want := uint8(ndpOptSourceLL)
	if p.typ == icmpv6NA {
		want = ndpOptTargetLL
	}
	for opts := m[ndpMsgLen:]; len(opts) > 0; {
		if len(opts) < 2 {
			return p, false // a type without a length
		}
		n := int(opts[1]) * 8
		if n == 0 || n > len(opts) {
			return p, false
		}
		if opts[0] == want {
			p.linkAddr = net.HardwareAddr(append([]byte(nil), opts[2:8]...))
		}
		opts = opts[n:]
	}
	return p, true
}

// zeroChecksum returns a copy of msg with its checksum field zeroed.
func zeroChecksum(msg []byte) []byte {
	c := append([]byte(nil), msg...)
	c[2], c[3] = 0, 0
	return c
}

// ndpDADProbe is a duplicate address detection solicitation for a (RFC
// 4862 section 5.4): from ::, to a's solicited-node group, no link-layer
// option. An owner of a answers with an advertisement to all nodes.
func ndpDADProbe(own net.HardwareAddr, a netip.Addr) []byte {
	dst := solicitedNode(a)
	return marshalNDP(own, multicastMAC(dst), ndpPacket{typ: icmpv6NS, src: netip.IPv6Unspecified(), dst: dst, target: a})
}

// ndpSolicit is an address resolution solicitation for target from src.
func ndpSolicit(own net.HardwareAddr, src, target netip.Addr) []byte {
	dst := solicitedNode(target)
	return marshalNDP(own, multicastMAC(dst), ndpPacket{typ: icmpv6NS, src: src, dst: dst, target: target, linkAddr: own})
}

// ndpAdvertisement is an unsolicited advertisement of a to all nodes with
// the override flag, so neighbours update their caches.
func ndpAdvertisement(own net.HardwareAddr, a netip.Addr) []byte {
	return marshalNDP(own, multicastMAC(allNodes), ndpPacket{
		typ: icmpv6NA, src: a, dst: allNodes, target: a, flags: naFlagOverride, linkAddr: own,
	})
}
