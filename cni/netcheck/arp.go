package netcheck

import (
	"encoding/binary"
	"net"
	"net/netip"
)

const (
	etherTypeARP  = 0x0806
	etherTypeIPv6 = 0x86dd
	etherHdrLen   = 14
	arpLen        = 28

	arpRequest = 1
	arpReply   = 2
)

var (
	broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	zeroMAC      = net.HardwareAddr{0, 0, 0, 0, 0, 0}
)

// arpPacket is the part of an Ethernet/IPv4 ARP packet the checks read.
type arpPacket struct {
	op                   uint16
	senderMAC, targetMAC net.HardwareAddr
	senderIP, targetIP   netip.Addr
}

// marshalARP builds an Ethernet frame holding an ARP request or reply.
func marshalARP(ethSrc, ethDst net.HardwareAddr, p arpPacket) []byte {
	b := make([]byte, etherHdrLen+arpLen)
	copy(b[0:6], ethDst)
	copy(b[6:12], ethSrc)
	binary.BigEndian.PutUint16(b[12:14], etherTypeARP)
	a := b[etherHdrLen:]
	binary.BigEndian.PutUint16(a[0:2], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:4], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:8], p.op)
	copy(a[8:14], p.senderMAC)
	sip := p.senderIP.As4()
	copy(a[14:18], sip[:])
	copy(a[18:24], p.targetMAC)
	tip := p.targetIP.As4()
	copy(a[24:28], tip[:])
	return b
}

// parseARP reads an Ethernet frame; ok is false unless it is an
// Ethernet/IPv4 ARP packet.
func parseARP(frame []byte) (p arpPacket, ok bool) {
	if len(frame) < etherHdrLen+arpLen || binary.BigEndian.Uint16(frame[12:14]) != etherTypeARP {
		return p, false
	}
	a := frame[etherHdrLen:]
	if binary.BigEndian.Uint16(a[0:2]) != 1 || binary.BigEndian.Uint16(a[2:4]) != 0x0800 || a[4] != 6 || a[5] != 4 {
		return p, false
	}
	p.op = binary.BigEndian.Uint16(a[6:8])
	p.senderMAC = net.HardwareAddr(append([]byte(nil), a[8:14]...))
	p.senderIP = netip.AddrFrom4([4]byte(a[14:18]))
	p.targetMAC = net.HardwareAddr(append([]byte(nil), a[18:24]...))
	p.targetIP = netip.AddrFrom4([4]byte(a[24:28]))
	return p, true
}

// arpProbe is an RFC 5227 probe for ip: sender IP 0.0.0.0, so no
// neighbour learns anything from it, and an owner of ip answers.
func arpProbe(own net.HardwareAddr, ip netip.Addr) []byte {
	return marshalARP(own, broadcastMAC, arpPacket{
		op: arpRequest, senderMAC: own, senderIP: netip.IPv4Unspecified(), targetMAC: zeroMAC, targetIP: ip,
	})
}

// arpAnnouncement is an RFC 5227 announcement (gratuitous ARP) of ip:
// sender and target IP both ip, so neighbours update their caches.
func arpAnnouncement(own net.HardwareAddr, ip netip.Addr) []byte {
	return marshalARP(own, broadcastMAC, arpPacket{
		op: arpRequest, senderMAC: own, senderIP: ip, targetMAC: zeroMAC, targetIP: ip,
	})
}
