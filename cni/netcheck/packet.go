package netcheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// packetConn is an AF_PACKET socket bound to one interface that receives
// ARP packets and ICMPv6 neighbour solicitations and advertisements (a
// socket filter drops everything else in the kernel). It is opened inside
// the pod's network namespace (in ns.Do) and stays bound to it, so it can
// be read and written from any goroutine. One socket serves both families:
// closing a packet socket waits for an RCU grace period (the kernel's
// synchronize_net), about 10 ms, so a second one would cost that again.
type packetConn struct {
	f       *os.File
	rc      syscall.RawConn
	ifindex int

	mu   sync.Mutex
	subs map[int]func(frame []byte)
	next int
	done chan struct{}
}

// htons converts a 16-bit value to network byte order for the socket API.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// ndpFilter accepts ARP, and IPv6 packets whose first header after IPv6 is
// ICMPv6 of type 135 or 136 (the offsets are those of an untagged Ethernet
// frame).
var ndpFilter = []bpf.Instruction{
	/* 0 */ bpf.LoadAbsolute{Off: 12, Size: 2},
	/* 1 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherTypeARP, SkipTrue: 7},
	/* 2 */ bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: etherTypeIPv6, SkipTrue: 5},
	/* 3 */ bpf.LoadAbsolute{Off: etherHdrLen + 6, Size: 1},
	/* 4 */ bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: protoICMPv6, SkipTrue: 3},
	/* 5 */ bpf.LoadAbsolute{Off: etherHdrLen + ipv6HdrLen, Size: 1},
	/* 6 */ bpf.JumpIf{Cond: bpf.JumpLessThan, Val: icmpv6NS, SkipTrue: 1},
	/* 7 */ bpf.JumpIf{Cond: bpf.JumpLessOrEqual, Val: icmpv6NA, SkipTrue: 1},
	/* 8 */ bpf.RetConstant{Val: 0},
	/* 9 */ bpf.RetConstant{Val: 1 << 16},
}

// listenPacket opens the socket; call it in the target network namespace.
func listenPacket(ifindex int) (*packetConn, error) {
	prog, err := bpf.Assemble(ndpFilter)
	if err != nil {
		return nil, fmt.Errorf("socket filter: %w", err)
	}
	// Protocol 0 receives nothing until bind, so no frame from another
	// interface, and none the filter would drop, slips in first.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	filter := make([]unix.SockFilter, len(prog))
	for i, ins := range prog {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		&unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("attach socket filter: %w", err)
	}
	// Our own frames are of no interest (Linux 4.20 and later; older
	// kernels deliver them and serve skips them).
	_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("bind packet socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "packet")
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	c := &packetConn{f: f, rc: rc, ifindex: ifindex, subs: map[int]func([]byte){}, done: make(chan struct{})}
	go c.serve()
	return c, nil
}

// send writes one Ethernet frame (header included) to its destination.
func (c *packetConn) send(frame []byte) error {
	sa := &unix.SockaddrLinklayer{Protocol: htons(binary.BigEndian.Uint16(frame[12:14])), Ifindex: c.ifindex, Halen: 6}
	copy(sa.Addr[:], frame[0:6])
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), frame, 0, sa)
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("send on packet socket: %w", err)
	}
	return nil
}

// subscribe calls fn with every frame received from now on until the
// returned func is called. fn runs on the reading goroutine: it must not
// block.
func (c *packetConn) subscribe(fn func(frame []byte)) (cancel func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.next
	c.next++
	c.subs[id] = fn
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.subs, id)
	}
}

// serve reads frames until the socket is closed, handing each incoming one
// (not the frames this host sends) to the subscribers. listenPacket starts
// it.
func (c *packetConn) serve() {
	defer close(c.done)
	buf := make([]byte, 2048)
	for {
		var (
			n    int
			from unix.Sockaddr
			rerr error
		)
		err := c.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err != nil {
			return // closed
		}
		if rerr != nil {
			if errors.Is(rerr, unix.EINTR) || errors.Is(rerr, unix.ENETDOWN) {
				continue
			}
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		frame := buf[:n]
		c.mu.Lock()
		for _, fn := range c.subs {
			fn(frame)
		}
		c.mu.Unlock()
	}
}

// Close stops serving and closes the socket.
func (c *packetConn) Close() error {
	err := c.f.Close()
	select {
	case <-c.done:
	case <-time.After(time.Second):
	}
	return err
}
