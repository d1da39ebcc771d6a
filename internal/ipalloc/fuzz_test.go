package ipalloc_test

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/ipalloc"
)

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// FuzzParsePool: any IPPool spec parses or fails without panicking; a
// parsed pool hands out only addresses of its CIDR, never its gateway, and
// overlaps itself.
func FuzzParsePool(f *testing.F) {
	f.Add("10.244.0.0/24", "10.244.0.1", "", "10.244.0.240/28", "0.0.0.0/0")
	f.Add("10.9.0.0/30", "", "10.9.0.1-10.9.0.2", "", "")
	f.Add("fd00::/64", "fd00::1", "fd00::100/120", "fd00::101", "::/0")
	f.Add("192.168.20.0/24", "192.168.20.1", "192.168.20.100-192.168.20.199", "192.168.20.150", "10.0.0.0/8")
	f.Add("10.0.0.0/32", "", "", "", "")
	f.Add("::/0", "", "", "", "")
	f.Fuzz(func(t *testing.T, cidr, gateway, incl, excl, routes string) {
		p := pool("f", cidr, func(p *v1alpha1.IPPool) {
			p.Spec.Gateway = gateway
			p.Spec.IncludeRanges, p.Spec.ExcludeRanges = splitList(incl), splitList(excl)
			for _, r := range splitList(routes) {
				p.Spec.Routes = append(p.Spec.Routes, v1alpha1.Route{Destination: r})
			}
		})
		pp, err := ipalloc.ParsePool(p)
		if err != nil {
			return
		}
		if pp.Size() == 0 {
			t.Fatalf("%+v: parsed with no address", p.Spec)
		}
		for _, i := range []uint64{0, pp.Size() / 2, pp.Size() - 1} {
			a := pp.At(i)
			if !pp.Prefix.Contains(a) || !pp.Contains(a) {
				t.Fatalf("%+v: At(%d) = %s, outside the pool", p.Spec, i, a)
			}
			if pp.Gateway.IsValid() && a == pp.Gateway {
				t.Fatalf("%+v: hands out its gateway", p.Spec)
			}
		}
		if a, ok := pp.FirstCommon(pp); !ok || a != pp.At(0) {
			t.Fatalf("%+v: FirstCommon with itself = %v %v, want %s", p.Spec, a, ok, pp.At(0))
		}
	})
}

// FuzzAllocate_annotations: whatever a pod's Berth annotations say, ADD
// either gives it addresses of the pools or fails with an *ipalloc.Error
// naming the pod, leaving no claim; DEL then leaves none bound.
func FuzzAllocate_annotations(f *testing.F) {
	f.Add("p", "true", "", "early")
	f.Add("p,q6", "false", "db", "")
	f.Add("nope", "no", "Bad_Group", "late")
	f.Add("p,,q6", "", "", "")
	f.Add("", "", "a-very-long-group-name-that-is-still-a-dns-label-of-63-chars-x", "")
	f.Fuzz(func(t *testing.T, pools, retain, group, release string) {
		e := newEnv(t, pool("p", "10.0.0.0/29"), pool("q6", "fd00::/125"))
		ann := map[string]string{}
		for k, v := range map[string]string{v1alpha1.AnnotationPool: pools, v1alpha1.AnnotationRetain: retain,
			v1alpha1.AnnotationGroup: group, v1alpha1.AnnotationRelease: release} {
			if v != "" {
				ann[k] = v
			}
		}
		pod := e.pod("x", "ReplicaSet", "web-5d8f", ann)
		als, err := e.add(pod)
		if err != nil {
			var ie *ipalloc.Error
			if !errors.As(err, &ie) || ie.Pod != "ns/x" {
				t.Fatalf("%v: error %v is not an *ipalloc.Error naming the pod", ann, err)
			}
			if n := len(e.store.Claims()); n != 0 {
				t.Fatalf("%v: failed ADD left %d claims", ann, n)
			}
			return
		}
		for _, a := range als {
			if a.Pool != "p" && a.Pool != "q6" {
				t.Fatalf("%v: address from pool %q", ann, a.Pool)
			}
			want := netip.MustParsePrefix(map[string]string{"p": "10.0.0.0/29", "q6": "fd00::/125"}[a.Pool])
			if !want.Contains(a.Address.Addr()) {
				t.Fatalf("%v: %s is not in pool %s", ann, a.Address, a.Pool)
			}
		}
		if err := e.alloc.Release(context.Background(), cid(pod), "eth0"); err != nil {
			t.Fatalf("%v: DEL: %v", ann, err)
		}
		for _, c := range e.store.Claims() {
			if c.Spec.State != v1alpha1.ClaimReserved {
				t.Fatalf("%v: claim %s is %s after DEL", ann, c.Name, c.Spec.State)
			}
		}
	})
}

// FuzzParseAnnotations: any value of a Berth annotation parses or fails
// without panicking; what parses is exactly what the annotation takes, and
// each error quotes the value.
func FuzzParseAnnotations(f *testing.F) {
	for _, v := range []string{"early", "erly", "true", "flase", "pods,pods6", "p,,q", "Bad_Group", "", " pods ", "a,b,c", "\xff"} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v string) {
		quoted := strconv.Quote(v)
		if retain, err := ipalloc.ParseRetain(v); err == nil {
			if strconv.FormatBool(retain) != v {
				t.Fatalf("ParseRetain(%q) = %v", v, retain)
			}
		} else if !errors.Is(err, ipalloc.ErrBadAnnotation) || !strings.Contains(err.Error(), quoted) {
			t.Fatalf("ParseRetain(%q): %v", v, err)
		}
		if g, err := ipalloc.ParseGroup(v); err == nil {
			if g != v || len(validation.IsDNS1123Label(g)) > 0 {
				t.Fatalf("ParseGroup(%q) = %q", v, g)
			}
		} else if !errors.Is(err, ipalloc.ErrBadAnnotation) || !strings.Contains(err.Error(), quoted) {
			t.Fatalf("ParseGroup(%q): %v", v, err)
		}
		if pools, err := ipalloc.ParsePools(v); err == nil {
			if len(pools) == 0 || len(pools) > 2 {
				t.Fatalf("ParsePools(%q) = %q: want one or two", v, pools)
			}
			for _, p := range pools {
				if len(validation.IsDNS1123Subdomain(p)) > 0 {
					t.Fatalf("ParsePools(%q) = %q: %q is no pool name", v, pools, p)
				}
			}
		} else if !strings.Contains(err.Error(), quoted) {
			t.Fatalf("ParsePools(%q): %v", v, err)
		}
		if early, err := ipalloc.ParseRelease(v); (err == nil) != (v == ipalloc.ReleaseEarly) || early != (v == ipalloc.ReleaseEarly) {
			t.Fatalf("ParseRelease(%q) = %v, %v", v, early, err)
		} else if err != nil && (!errors.Is(err, ipalloc.ErrBadAnnotation) || !strings.Contains(err.Error(), quoted)) {
			t.Fatalf("ParseRelease(%q): %v", v, err)
		}
	})
}
