package netcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// Checker runs berth-netcheck's checks on one interface in a network
// namespace. It keeps no state between runs.
type Checker struct {
	cfg Config
	// hostNS is the namespace whose addresses waitGatewayDAD reads; nil:
	// the plugin's own (the runtime's, where a bridge lives). Tests set
	// it to the namespace of their bridge.
	hostNS ns.NetNS
}

// NewChecker validates cfg and fills in its defaults.
func NewChecker(cfg Config) (*Checker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Checker{cfg: cfg.withDefaults()}, nil
}

// Request is one interface to check.
type Request struct {
	// NetNS is the pod's network namespace.
	NetNS ns.NetNS
	// IfName is the interface in it, as CNI_IFNAME.
	IfName string
	// Addrs are the interface's addresses from the previous result.
	Addrs []netip.Prefix
	// Gateways are the gateways of those addresses.
	Gateways []netip.Addr
	// Announce sends a gratuitous ARP or unsolicited neighbour
	// advertisement for each address once every check passed (ADD).
	Announce bool
}

// ConflictError says an address of the pod is in use by another host.
type ConflictError struct {
	IP     netip.Addr
	IfName string
	// MAC is the other host's link-layer address; nil when only the
	// kernel's duplicate address detection saw the conflict.
	MAC net.HardwareAddr
}

func (e *ConflictError) Error() string {
	if e.MAC == nil {
		return fmt.Sprintf("IP %s on %s is already in use (the kernel's duplicate address detection failed)", e.IP, e.IfName)
	}
	return fmt.Sprintf("IP %s on %s is already in use by %s", e.IP, e.IfName, e.MAC)
}

// UnreachableError says the gateway or a target did not answer.
type UnreachableError struct {
	// What is "gateway" or "target".
	What   string
	Addr   string
	IfName string
	Tries  int
	// Reason is the protocol and what it saw, e.g. "ARP: no reply".
	Reason string
}

func (e *UnreachableError) Error() string {
	tries := "tries"
	if e.Tries == 1 {
		tries = "try"
	}
	return fmt.Sprintf("%s %s unreachable from %s after %d %s (%s)", e.What, e.Addr, e.IfName, e.Tries, tries, e.Reason)
}

// reachable is a gateway or target to check.
type reachable struct {
	what   string // "gateway" or "target"
	addr   netip.Addr
	port   uint16 // TCP when set
	onLink bool   // on one of the pod's subnets: resolved with ARP/NDP
}

func (t reachable) String() string {
	if t.port == 0 {
		return t.addr.String()
	}
	return netip.AddrPortFrom(t.addr, t.port).String()
}

// run is the state of one Run.
type run struct {
	cfg    Config
	req    Request
	mac    net.HardwareAddr
	link   netlink.Link
	pc     *packetConn
	ll     netip.Addr // usable link-local address, if any
	v6Fail map[netip.Addr]bool
	hostNS ns.NetNS
}

// budget bounds a whole Run.
func (c *Checker) budget() time.Duration {
	return 2*(c.cfg.ConflictWindow+time.Duration(c.cfg.Tries)*c.cfg.Timeout) + 5*time.Second
}

// Run checks req: first, in parallel, that no other host answers for the
// interface's addresses during the conflict window and that the gateways
// (and the targets on the pod's subnets) answer ARP/NDP; then, with the
// addresses proven unique, the ICMP and TCP checks. It returns a
// *ConflictError, an *UnreachableError or an error saying why the checks
// could not run.
func (c *Checker) Run(ctx context.Context, req Request) error {
	ctx, cancel := context.WithTimeout(ctx, c.budget())
	defer cancel()

	r := &run{cfg: c.cfg, req: req, hostNS: c.hostNS, v6Fail: map[netip.Addr]bool{}}
	targets := r.reachables()
	if len(req.Addrs) == 0 && len(targets) == 0 {
		return nil
	}
	if err := r.open(); err != nil {
		return err
	}
	defer r.close()

	if err := r.waitTentative(ctx); err != nil {
		return err
	}
	if err := r.waitGatewayDAD(ctx, targets); err != nil {
		return err
	}
	if err := r.phaseL2(ctx, targets); err != nil {
		return err
	}
	if err := r.phaseL3(ctx, targets); err != nil {
		return err
	}
	if req.Announce {
		return r.announce()
	}
	return nil
}

// reachables lists the gateways and targets, without duplicates.
func (r *run) reachables() []reachable {
	var out []reachable
	seen := map[netip.AddrPort]bool{}
	add := func(t reachable) {
		k := netip.AddrPortFrom(t.addr, t.port)
		if seen[k] || r.ownAddr(t.addr) {
			return
		}
		seen[k] = true
		t.onLink = r.onLink(t.addr)
		out = append(out, t)
	}
	if !r.cfg.SkipGateway {
		for _, g := range r.req.Gateways {
			add(reachable{what: "gateway", addr: g})
		}
	}
	for _, t := range r.cfg.Targets {
		add(reachable{what: "target", addr: t.Addr, port: t.Port})
	}
	return out
}

func (r *run) ownAddr(a netip.Addr) bool {
	return slices.ContainsFunc(r.req.Addrs, func(p netip.Prefix) bool { return p.Addr() == a })
}

// onLink reports whether a is on one of the pod's subnets, or link-local.
func (r *run) onLink(a netip.Addr) bool {
	return a.IsLinkLocalUnicast() || slices.ContainsFunc(r.req.Addrs, func(p netip.Prefix) bool { return p.Masked().Contains(a) })
}

// zoned is a with the interface as its zone when it is link-local.
func (r *run) zoned(a netip.Addr) netip.Addr {
	if a.Is6() && a.IsLinkLocalUnicast() {
		return a.WithZone(r.req.IfName)
	}
	return a
}

func (r *run) has(is6 bool) bool {
	return slices.ContainsFunc(r.req.Addrs, func(p netip.Prefix) bool { return p.Addr().Is6() == is6 })
}

// open looks the interface up and opens the packet socket, inside the
// pod's network namespace.
func (r *run) open() error {
	return r.req.NetNS.Do(func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(r.req.IfName)
		if err != nil {
			return fmt.Errorf("interface %s: %w", r.req.IfName, err)
		}
		attrs := link.Attrs()
		if attrs.Flags&net.FlagUp == 0 {
			return fmt.Errorf("interface %s is down", r.req.IfName)
		}
		if len(attrs.HardwareAddr) != 6 {
			return fmt.Errorf("interface %s has no Ethernet address: ARP and NDP checks need one", r.req.IfName)
		}
		r.link, r.mac = link, attrs.HardwareAddr
		r.pc, err = listenPacket(attrs.Index)
		return err
	})
}

func (r *run) close() {
	if r.pc != nil {
		_ = r.pc.Close()
	}
}

// waitTentative waits while the kernel's duplicate address detection runs
// on the interface's IPv6 addresses: a probe of ours during it would look
// like another host's and fail it. It records the addresses the kernel
// found duplicate and a usable link-local source address.
func (r *run) waitTentative(ctx context.Context) error {
	if !r.has(true) {
		return nil
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var addrs []netlink.Addr
		err := r.req.NetNS.Do(func(ns.NetNS) error {
			var err error
			addrs, err = netlinksafe.AddrList(r.link, netlink.FAMILY_V6)
			return err
		})
		if err != nil {
			return fmt.Errorf("list addresses of %s: %w", r.req.IfName, err)
		}
		tentative := false
		r.ll = netip.Addr{}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok {
				continue
			}
			switch {
			case a.Flags&syscall.IFA_F_DADFAILED != 0:
				r.v6Fail[ip] = true
			case a.Flags&syscall.IFA_F_TENTATIVE != 0:
				tentative = tentative || r.ownAddr(ip)
			case ip.IsLinkLocalUnicast() && !r.ll.IsValid():
				r.ll = ip
			}
		}
		if !tentative {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("IPv6 addresses of %s still tentative: %w", r.req.IfName, ctx.Err())
		case <-tick.C:
		}
	}
}

// waitGatewayDAD waits while an on-link IPv6 gateway is an address of the
// host's own that the kernel's duplicate address detection still holds: a
// tentative address answers no solicitation. The bridge plugin with
// isGateway puts a node's first IPv6 gateway on the bridge just before
// this check runs, and detection takes one to two seconds; without the
// wait that pod's first ADD failed. A gateway that is not the host's costs
// one dump of the host's IPv6 addresses. An address the detection found
// in use elsewhere is not waited for: the probe then reports it
// unreachable.
func (r *run) waitGatewayDAD(ctx context.Context, targets []reachable) error {
	var gws []netip.Addr
	for _, t := range targets {
		if t.what == "gateway" && t.addr.Is6() && t.onLink {
			gws = append(gws, t.addr)
		}
	}
	if len(gws) == 0 {
		return nil
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		gw, err := r.tentativeHostAddr(gws)
		if err != nil || !gw.IsValid() {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gateway %s is an address of this host still in duplicate address detection: %w", gw, ctx.Err())
		case <-tick.C:
		}
	}
}

// tentativeHostAddr returns the first of addrs that is a tentative (and
// not failed) IPv6 address of the host.
func (r *run) tentativeHostAddr(addrs []netip.Addr) (netip.Addr, error) {
	var list []netlink.Addr
	lister := func(ns.NetNS) error {
		var err error
		list, err = netlinksafe.AddrList(nil, netlink.FAMILY_V6)
		return err
	}
	var err error
	if r.hostNS != nil {
		err = r.hostNS.Do(lister)
	} else {
		err = lister(nil)
	}
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list the host's IPv6 addresses: %w", err)
	}
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok && slices.Contains(addrs, ip) && a.Flags&syscall.IFA_F_TENTATIVE != 0 && a.Flags&syscall.IFA_F_DADFAILED == 0 {
			return ip, nil
		}
	}
	return netip.Addr{}, nil
}

// claims reports whether frame says that addr is in use at a link-layer
// address, and which: an ARP packet from addr, a neighbour advertisement
// for addr, or a neighbour solicitation from addr. The unspecified address
// is nobody's: probes are sent from it.
func claims(frame []byte, addr netip.Addr) (net.HardwareAddr, bool) {
	if addr.IsUnspecified() {
		return nil, false
	}
	if addr.Is4() {
		p, ok := parseARP(frame)
		if !ok || p.senderIP != addr {
			return nil, false
		}
		return p.senderMAC, true
	}
	p, ok := parseNDP(frame)
	if !ok {
		return nil, false
	}
	if (p.typ == icmpv6NA && p.target == addr) || (p.typ == icmpv6NS && p.src == addr) {
		return p.mac(), true
	}
	return nil, false
}

// watch reports the first link-layer address other than the interface's
// own that claims addr, until cancel is called.
func (r *run) watch(addr netip.Addr) (claimed <-chan net.HardwareAddr, cancel func()) {
	ch := make(chan net.HardwareAddr, 1)
	cancel = r.pc.subscribe(func(frame []byte) {
		if mac, ok := claims(frame, addr); ok && !bytes.Equal(mac, r.mac) {
			select {
			case ch <- mac:
			default:
			}
		}
	})
	return ch, cancel
}

// phaseL2 runs the duplicate-address probes and the ARP/NDP resolution of
// the on-link gateways and targets in parallel. A conflict ends it at once;
// a resolved gateway ends its own wait at once; the conflict window is
// always waited out.
func (r *run) phaseL2(ctx context.Context, targets []reachable) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	conflictErrs := make([]error, len(r.req.Addrs))
	var conflicts sync.WaitGroup
	for i, p := range r.req.Addrs {
		conflicts.Go(func() {
			conflictErrs[i] = r.probeConflict(ctx, p.Addr())
			if conflictErrs[i] != nil {
				cancel()
			}
		})
	}
	unique := make(chan struct{}) // closed once no address is in conflict
	go func() {
		conflicts.Wait()
		for _, err := range conflictErrs {
			if err != nil {
				return
			}
		}
		close(unique)
	}()

	resolveErrs := make([]error, len(targets))
	var resolves sync.WaitGroup
	for i, t := range targets {
		if !t.onLink || t.port != 0 {
			continue
		}
		resolves.Go(func() { resolveErrs[i] = r.resolve(ctx, t, unique) })
	}
	conflicts.Wait()
	resolves.Wait()
	return firstError(ctx, conflictErrs, resolveErrs)
}

// firstError returns the first check failure, conflicts first; a context
// error only when nothing else failed.
func firstError(ctx context.Context, lists ...[]error) error {
	var ctxErr error
	for _, l := range lists {
		for _, err := range l {
			switch {
			case err == nil:
			case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
				if ctxErr == nil {
					ctxErr = err
				}
			default:
				return err
			}
		}
	}
	if ctxErr != nil {
		if err := context.Cause(ctx); err != nil {
			return fmt.Errorf("checks did not finish: %w", err)
		}
		return fmt.Errorf("checks did not finish: %w", ctxErr)
	}
	return nil
}

// probeConflict sends cfg.Probes duplicate-address probes for a over the
// conflict window and returns a *ConflictError when another host answers.
func (r *run) probeConflict(ctx context.Context, a netip.Addr) error {
	claimed, cancel := r.watch(a)
	defer cancel()
	var probe []byte
	if a.Is4() {
		probe = arpProbe(r.mac, a)
	} else {
		probe = ndpDADProbe(r.mac, a)
	}
	window := time.NewTimer(r.cfg.ConflictWindow)
	defer window.Stop()
	next := time.NewTimer(0)
	defer next.Stop()
	interval := r.cfg.ConflictWindow / time.Duration(r.cfg.Probes)
	for sent := 0; ; {
		select {
		case mac := <-claimed:
			return &ConflictError{IP: a, IfName: r.req.IfName, MAC: mac}
		case <-next.C:
			if err := r.pc.send(probe); err != nil {
				return fmt.Errorf("probe %s: %w", a, err)
			}
			if sent++; sent < r.cfg.Probes {
				next.Reset(interval)
			}
		case <-window.C:
			select {
			case mac := <-claimed:
				return &ConflictError{IP: a, IfName: r.req.IfName, MAC: mac}
			default:
			}
			if r.v6Fail[a] {
				return &ConflictError{IP: a, IfName: r.req.IfName}
			}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// resolve asks for t's link-layer address up to cfg.Tries times, each
// waiting cfg.Timeout; any answer from t ends it. IPv4 asks with an ARP
// probe (sender 0.0.0.0) and IPv6 from the link-local address, so no
// neighbour learns a pod address before it is proven unique; without a
// usable link-local address the IPv6 solicitation waits for unique.
func (r *run) resolve(ctx context.Context, t reachable, unique <-chan struct{}) error {
	proto := "ARP"
	if t.addr.Is6() {
		proto = "NDP"
	}
	if !r.has(t.addr.Is6()) {
		return &UnreachableError{What: t.what, Addr: t.String(), IfName: r.req.IfName, Tries: 0,
			Reason: fmt.Sprintf("%s: %s has no address of its family", proto, r.req.IfName)}
	}
	answered, cancel := r.watch(t.addr)
	defer cancel()

	var probe []byte
	if t.addr.Is4() {
		probe = arpProbe(r.mac, t.addr)
	} else {
		src := r.ll
		if !src.IsValid() {
			select {
			case <-unique:
			case <-ctx.Done():
				return ctx.Err()
			}
			src = r.firstAddr(true)
		}
		probe = ndpSolicit(r.mac, src, t.addr)
	}
	for try := 1; try <= r.cfg.Tries; try++ {
		if err := r.pc.send(probe); err != nil {
			return fmt.Errorf("%s %s: %w", t.what, t, err)
		}
		timer := time.NewTimer(r.cfg.Timeout)
		select {
		case <-answered:
			timer.Stop()
			return nil
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		}
	}
	return &UnreachableError{What: t.what, Addr: t.String(), IfName: r.req.IfName, Tries: r.cfg.Tries, Reason: proto + ": no reply"}
}

func (r *run) firstAddr(is6 bool) netip.Addr {
	for _, p := range r.req.Addrs {
		if p.Addr().Is6() == is6 {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// phaseL3 runs, in parallel, the ICMP echoes (gateways and on-link targets
// with ICMP set, off-link targets always) and the TCP connections.
func (r *run) phaseL3(ctx context.Context, targets []reachable) error {
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		switch {
		case t.port != 0:
			wg.Go(func() { errs[i] = r.dial(ctx, t) })
		case !t.onLink || r.cfg.ICMP:
			wg.Go(func() { errs[i] = r.echo(ctx, t) })
		}
	}
	wg.Wait()
	return firstError(ctx, errs)
}

// announce tells the neighbours where the addresses now are.
func (r *run) announce() error {
	for _, p := range r.req.Addrs {
		a := p.Addr()
		var frame []byte
		if a.Is4() {
			frame = arpAnnouncement(r.mac, a)
		} else {
			frame = ndpAdvertisement(r.mac, a)
		}
		if err := r.pc.send(frame); err != nil {
			return fmt.Errorf("announce %s: %w", a, err)
		}
	}
	return nil
}
