package netcheck

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// echo sends ICMP echo requests to t, from the interface's first address
// of t's family, up to cfg.Tries times, each waiting cfg.Timeout; any
// matching reply ends it.
func (r *run) echo(ctx context.Context, t reachable) error {
	src := r.firstAddr(t.addr.Is6())
	if !src.IsValid() {
		return &UnreachableError{What: t.what, Addr: t.String(), IfName: r.req.IfName,
			Reason: fmt.Sprintf("ICMP echo: %s has no address of its family", r.req.IfName)}
	}
	if t.addr.Is6() && t.addr.IsLinkLocalUnicast() && r.ll.IsValid() {
		src = r.zoned(r.ll) // a link-local destination needs the interface
	}
	network, reqType, replyType, proto := "ip4:icmp", icmp.Type(ipv4.ICMPTypeEcho), icmp.Type(ipv4.ICMPTypeEchoReply), 1
	if t.addr.Is6() {
		network, reqType, replyType, proto = "ip6:ipv6-icmp", ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, protoICMPv6
	}
	var conn *icmp.PacketConn
	err := r.req.NetNS.Do(func(ns.NetNS) error {
		var err error
		conn, err = icmp.ListenPacket(network, src.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("ICMP socket in %s: %w", r.req.NetNS.Path(), err)
	}
	defer conn.Close()

	id := rand.IntN(1 << 16)
	dst := &net.IPAddr{IP: t.addr.AsSlice(), Zone: r.zoned(t.addr).Zone()}
	buf := make([]byte, 1500)
	for try := 1; try <= r.cfg.Tries; try++ {
		msg, _ := (&icmp.Message{Type: reqType, Body: &icmp.Echo{ID: id, Seq: try, Data: []byte("berth-netcheck")}}).Marshal(nil)
		if _, err := conn.WriteTo(msg, dst); err != nil {
			return fmt.Errorf("ICMP echo to %s: %w", t, err)
		}
		deadline := time.Now().Add(r.cfg.Timeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		if err := conn.SetReadDeadline(deadline); err != nil {
			return fmt.Errorf("ICMP socket: %w", err)
		}
		for {
			n, peer, err := conn.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return fmt.Errorf("ICMP echo to %s: %w", t, err)
			}
			from, ok := peer.(*net.IPAddr)
			if !ok || !from.IP.Equal(dst.IP) {
				continue
			}
			m, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil || m.Type != replyType {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id {
				return nil
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return &UnreachableError{What: t.what, Addr: t.String(), IfName: r.req.IfName, Tries: r.cfg.Tries, Reason: "ICMP echo: no reply"}
}

// dial opens a TCP connection to t from the pod's network namespace, up to
// cfg.Tries times, one try per cfg.Timeout.
func (r *run) dial(ctx context.Context, t reachable) error {
	var last error
	for try := 1; try <= r.cfg.Tries; try++ {
		start := time.Now()
		err := r.req.NetNS.Do(func(ns.NetNS) error {
			d := net.Dialer{Timeout: r.cfg.Timeout}
			c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(r.zoned(t.addr), t.port).String())
			if err != nil {
				return err
			}
			return c.Close()
		})
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		last = err
		if try < r.cfg.Tries {
			// One try per timeout, even when refused at once.
			wait := time.NewTimer(r.cfg.Timeout - time.Since(start))
			select {
			case <-wait.C:
			case <-ctx.Done():
				wait.Stop()
				return ctx.Err()
			}
		}
	}
	return &UnreachableError{What: t.what, Addr: t.String(), IfName: r.req.IfName, Tries: r.cfg.Tries, Reason: "TCP: " + dialReason(last)}
}

// dialReason says in a few words why a connection failed.
func dialReason(err error) string {
	var ne net.Error
	var errno syscall.Errno
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "no reply"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.As(err, &errno):
		return errno.Error()
	}
	return err.Error()
}
