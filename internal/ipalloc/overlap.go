package ipalloc

import (
	"fmt"
	"net/netip"

	"github.com/berth-io/berth/api/v1alpha1"
)

// FirstCommon returns the lowest address both pools hand out, if any.
func (p *Pool) FirstCommon(q *Pool) (netip.Addr, bool) {
	i, j := 0, 0
	for i < len(p.ranges) && j < len(q.ranges) {
		a, b := p.ranges[i], q.ranges[j]
		if a.first.Is4() != b.first.Is4() {
			return netip.Addr{}, false
		}
		first, last := a.first, a.last
		if first.Less(b.first) {
			first = b.first
		}
		if b.last.Less(last) {
			last = b.last
		}
		if !last.Less(first) {
			return first, true
		}
		if a.last.Less(b.last) {
			i++
		} else {
			j++
		}
	}
	return netip.Addr{}, false
}

// older reports whether a was created before b (by creation time, then
// name): of two overlapping pools, the older keeps handing out addresses.
func older(a, b *v1alpha1.IPPool) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Name < b.Name
}

// OverlapError says why pool p, parsed as pp, may not hand out addresses:
// an older valid pool among all hands out some of the same addresses.
// Claim names are per pool and address, so both pools could give one
// address to two pods (the lock across pools, soleClaim, keeps that from
// happening while caches lag, but would make the pools' pods race for
// their addresses). parse parses a pool (a cache may serve it). nil: no
// overlap.
func OverlapError(p *v1alpha1.IPPool, pp *Pool, all []*v1alpha1.IPPool, parse func(*v1alpha1.IPPool) (*Pool, error)) error {
	for _, o := range all {
		if o.UID == p.UID || o.Name == p.Name || !older(o, p) {
			continue
		}
		op, err := parse(o)
		if err != nil {
			continue // an invalid pool hands out nothing
		}
		if a, ok := pp.FirstCommon(op); ok {
			return fmt.Errorf("its addresses overlap those of the older pool %s (%s among them), which keeps them: "+
				"the same address could go to two pods; make the pools disjoint (cidr, includeRanges, excludeRanges)", o.Name, a)
		}
	}
	return nil
}
