package ipalloc_test

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/ipalloc"
)

func TestPool_FirstCommon(t *testing.T) {
	ranges := func(p *v1alpha1.IPPool, incl, excl []string) *v1alpha1.IPPool {
		p.Spec.IncludeRanges, p.Spec.ExcludeRanges = incl, excl
		return p
	}
	for _, tc := range []struct {
		name string
		a, b *v1alpha1.IPPool
		want string // "" = disjoint
	}{
		{name: "same cidr", a: pool("a", "10.0.0.0/24"), b: pool("b", "10.0.0.0/24"), want: "10.0.0.1"},
		{name: "nested", a: pool("a", "10.0.0.0/16"), b: pool("b", "10.0.7.0/24"), want: "10.0.7.1"},
		{name: "disjoint cidrs", a: pool("a", "10.0.0.0/24"), b: pool("b", "10.0.1.0/24")},
		{name: "other family", a: pool("a", "10.0.0.0/24"), b: pool("b", "fd00::/64")},
		{name: "excluded where the other includes",
			a: ranges(pool("a", "10.0.0.0/24"), nil, []string{"10.0.0.240/28"}),
			b: ranges(pool("b", "10.0.0.0/24"), []string{"10.0.0.240-10.0.0.250"}, nil)},
		{name: "ranges meet at one address",
			a: ranges(pool("a", "10.0.0.0/24"), []string{"10.0.0.10-10.0.0.20", "10.0.0.30-10.0.0.40"}, nil),
			b: ranges(pool("b", "10.0.0.0/24"), []string{"10.0.0.21-10.0.0.29", "10.0.0.40-10.0.0.50"}, nil), want: "10.0.0.40"},
		{name: "ipv6", a: pool("a", "fd00::/64"), b: ranges(pool("b", "fd00::/64"), []string{"fd00::100/120"}, nil), want: "fd00::100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pa, err := ipalloc.ParsePool(tc.a)
			if err != nil {
				t.Fatal(err)
			}
			pb, err := ipalloc.ParsePool(tc.b)
			if err != nil {
				t.Fatal(err)
			}
			for _, order := range [][2]*ipalloc.Pool{{pa, pb}, {pb, pa}} {
				got, ok := order[0].FirstCommon(order[1])
				if (tc.want == "") == ok || (ok && got.String() != tc.want) {
					t.Errorf("%s vs %s: %v %v, want %q", order[0].Name, order[1].Name, got, ok, tc.want)
				}
			}
		})
	}
}

func TestOverlapError(t *testing.T) {
	t1 := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	t2 := metav1.NewTime(t1.Add(time.Hour))
	created := func(p *v1alpha1.IPPool, at metav1.Time) *v1alpha1.IPPool {
		p.CreationTimestamp, p.UID = at, types.UID("uid-"+p.Name)
		return p
	}
	first := created(pool("z-first", "10.0.0.0/24"), t1)
	second := created(pool("a-second", "10.0.0.0/25"), t2)
	invalid := created(pool("broken", "10.0.0.0/24", func(p *v1alpha1.IPPool) { p.Spec.Gateway = "192.0.2.1" }), t1)
	other := created(pool("other", "10.9.0.0/24"), t1)
	all := []*v1alpha1.IPPool{first, second, invalid, other}
	for _, tc := range []struct {
		p    *v1alpha1.IPPool
		want bool
	}{
		{p: first},              // older than its overlap: keeps working
		{p: second, want: true}, // newer: refused, though its name sorts first
		{p: other},
	} {
		pp, err := ipalloc.ParsePool(tc.p)
		if err != nil {
			t.Fatal(err)
		}
		err = ipalloc.OverlapError(tc.p, pp, all, ipalloc.ParsePool)
		if (err != nil) != tc.want {
			t.Errorf("%s: %v, want overlap %v", tc.p.Name, err, tc.want)
		}
	}
}
