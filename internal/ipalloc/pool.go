package ipalloc

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"strings"
	"time"

	"github.com/berth-io/berth/api/v1alpha1"
)

// Route is a route a pod gets with its address.
type Route struct {
	Dst netip.Prefix
	GW  netip.Addr // invalid: none
}

// Pool is an IPPool's spec, parsed: the addresses it hands out in order.
type Pool struct {
	Name    string
	Prefix  netip.Prefix
	Gateway netip.Addr // invalid: none
	Routes  []Route
	Retain  bool
	TTL     time.Duration
	// Reclaim: when no address is free, a fresh allocation takes over
	// another app's reservation (spec.reclaimReservations).
	Reclaim bool
	ranges  []addrRange // sorted, disjoint
	size    uint64      // capped at 1<<62
}

type addrRange struct {
	first, last netip.Addr
	n           uint64 // capped
}

const maxSize = uint64(1) << 62

// ParsePool validates an IPPool and returns its parsed form.
func ParsePool(p *v1alpha1.IPPool) (*Pool, error) {
	pfx, err := netip.ParsePrefix(p.Spec.CIDR)
	if err != nil {
		return nil, fmt.Errorf("cidr %q: %w", p.Spec.CIDR, err)
	}
	if pfx.Addr().Zone() != "" {
		return nil, fmt.Errorf("cidr %q: zones are not allowed", p.Spec.CIDR)
	}
	pool := &Pool{Name: p.Name, Prefix: pfx, Retain: true, Reclaim: true}
	pfx = pfx.Masked()
	if p.Spec.Retain != nil {
		pool.Retain = *p.Spec.Retain
	}
	if p.Spec.ReclaimReservations != nil {
		pool.Reclaim = *p.Spec.ReclaimReservations
	}
	if pool.TTL, err = p.Spec.ParseReservationTTL(); err != nil {
		return nil, err
	}
	if p.Spec.Gateway != "" {
		gw, err := netip.ParseAddr(p.Spec.Gateway)
		if err != nil {
			return nil, fmt.Errorf("gateway %q: %w", p.Spec.Gateway, err)
		}
		if !pfx.Contains(gw) {
			return nil, fmt.Errorf("gateway %s is outside cidr %s", gw, pfx)
		}
		pool.Gateway = gw
	}
	for _, r := range p.Spec.Routes {
		dst, err := netip.ParsePrefix(r.Destination)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", r.Destination, err)
		}
		if dst.Addr().Is4() != pfx.Addr().Is4() {
			return nil, fmt.Errorf("route %s: not of the pool's IP family", dst)
		}
		rt := Route{Dst: dst.Masked(), GW: pool.Gateway}
		if r.Gateway != "" {
			if rt.GW, err = netip.ParseAddr(r.Gateway); err != nil {
				return nil, fmt.Errorf("route %s gateway %q: %w", dst, r.Gateway, err)
			}
		}
		pool.Routes = append(pool.Routes, rt)
	}

	// Whole subnet minus network and (IPv4) broadcast, unless ranges say.
	var incl []addrRange
	if len(p.Spec.IncludeRanges) == 0 {
		first, last := pfx.Addr(), lastAddr(pfx)
		if pfx.Bits() < pfx.Addr().BitLen()-1 {
			first = first.Next()
			if pfx.Addr().Is4() {
				last = last.Prev()
			}
		}
		incl = []addrRange{{first: first, last: last}}
	} else {
		for _, s := range p.Spec.IncludeRanges {
			r, err := parseRange(s, pfx)
			if err != nil {
				return nil, fmt.Errorf("includeRanges: %w", err)
			}
			incl = append(incl, r)
		}
	}
	var excl []addrRange
	for _, s := range p.Spec.ExcludeRanges {
		r, err := parseRange(s, pfx)
		if err != nil {
			return nil, fmt.Errorf("excludeRanges: %w", err)
		}
		excl = append(excl, r)
	}
	if pool.Gateway.IsValid() {
		excl = append(excl, addrRange{first: pool.Gateway, last: pool.Gateway})
	}
	for _, r := range incl {
		pool.ranges = mergeIn(pool.ranges, subtract(r, excl)...)
	}
	for i := range pool.ranges {
		pool.ranges[i].n = count(pool.ranges[i].first, pool.ranges[i].last)
		pool.size = min(maxSize, pool.size+pool.ranges[i].n)
	}
	if pool.size == 0 {
		return nil, errors.New("no address left to hand out after ranges and gateway")
	}
	return pool, nil
}

// Size is the number of addresses the pool hands out (capped at 2^62).
func (p *Pool) Size() uint64 { return p.size }

// Contains reports whether the pool hands out a.
func (p *Pool) Contains(a netip.Addr) bool {
	for _, r := range p.ranges {
		if r.first.Compare(a) <= 0 && a.Compare(r.last) <= 0 {
			return true
		}
	}
	return false
}

// At returns the i-th address the pool hands out, i < Size().
func (p *Pool) At(i uint64) netip.Addr {
	for _, r := range p.ranges {
		if i < r.n {
			return add(r.first, i)
		}
		i -= r.n
	}
	panic("ipam: pool index out of range")
}

func parseRange(s string, in netip.Prefix) (addrRange, error) {
	var r addrRange
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return r, fmt.Errorf("%q: %w", s, err)
		}
		r = addrRange{first: p.Masked().Addr(), last: lastAddr(p.Masked())}
	} else if a, b, ok := strings.Cut(s, "-"); ok {
		first, err := netip.ParseAddr(strings.TrimSpace(a))
		if err != nil {
			return r, fmt.Errorf("%q: %w", s, err)
		}
		last, err := netip.ParseAddr(strings.TrimSpace(b))
		if err != nil {
			return r, fmt.Errorf("%q: %w", s, err)
		}
		if last.Less(first) {
			return r, fmt.Errorf("%q: the range ends before it starts", s)
		}
		r = addrRange{first: first, last: last}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return r, fmt.Errorf("%q: want a CIDR, an address, or two addresses joined by '-'", s)
		}
		r = addrRange{first: a, last: a}
	}
	if !in.Contains(r.first) || !in.Contains(r.last) {
		return r, fmt.Errorf("%q is not inside cidr %s", s, in)
	}
	return r, nil
}

// subtract returns r minus every range of ex.
func subtract(r addrRange, ex []addrRange) []addrRange {
	out := []addrRange{r}
	for _, e := range ex {
		var next []addrRange
		for _, o := range out {
			if e.last.Less(o.first) || o.last.Less(e.first) {
				next = append(next, o)
				continue
			}
			if o.first.Less(e.first) {
				next = append(next, addrRange{first: o.first, last: e.first.Prev()})
			}
			if e.last.Less(o.last) {
				next = append(next, addrRange{first: e.last.Next(), last: o.last})
			}
		}
		out = next
	}
	return out
}

// mergeIn adds rs to the sorted, disjoint list, merging overlaps.
func mergeIn(list []addrRange, rs ...addrRange) []addrRange {
	list = append(list, rs...)
	// insertion sort: lists are short
	for i := 1; i < len(list); i++ {
		for j := i; j > 0 && list[j].first.Less(list[j-1].first); j-- {
			list[j], list[j-1] = list[j-1], list[j]
		}
	}
	var out []addrRange
	for _, r := range list {
		if n := len(out); n > 0 && !out[n-1].last.Next().Less(r.first) && out[n-1].last.Next().IsValid() {
			if out[n-1].last.Less(r.last) {
				out[n-1].last = r.last
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func toBig(a netip.Addr) *big.Int { return new(big.Int).SetBytes(a.AsSlice()) }

func count(first, last netip.Addr) uint64 {
	d := new(big.Int).Sub(toBig(last), toBig(first))
	d.Add(d, big.NewInt(1))
	if !d.IsUint64() || d.Uint64() > maxSize {
		return maxSize
	}
	return d.Uint64()
}

func add(a netip.Addr, i uint64) netip.Addr {
	if a.Is4() {
		b := a.As4()
		v := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
		v += i
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	s := new(big.Int).Add(toBig(a), new(big.Int).SetUint64(i)).Bytes()
	var b [16]byte
	copy(b[16-len(s):], s)
	return netip.AddrFrom16(b)
}
