package ipamserver_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sort"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/cachetrim"
)

// blindCache has seen no IPClaim yet: the store's reads of claims come
// from its own writes only.
type blindCache struct{ cache.Cache }

func (blindCache) List(_ context.Context, l client.ObjectList, _ ...client.ListOption) error {
	return nil
}

// TestStore_overlay: the store shows its own writes, by every index it
// lists by, until the cache sees them; an update moves a claim between
// index values and a delete hides it.
func TestStore_overlay(t *testing.T) {
	cfg, c := startAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ca, err := cache.New(cfg, cachetrim.Options(cache.Options{Scheme: scheme(t)}))
	if err != nil {
		t.Fatal(err)
	}
	st := ipamserver.NewStore(blindCache{ca}, c, c)
	app := v1alpha1.App{Kind: v1alpha1.AppGroup, Namespace: "ns", Name: "g"}
	mk := func(name, container string) *v1alpha1.IPClaim {
		return &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: v1alpha1.IPClaimSpec{Pool: "p", Address: "10.0.0.1", State: v1alpha1.ClaimBound, ContainerID: container, Interface: "eth0",
				Node: "n1", App: &app, Pod: v1alpha1.PodRef{Namespace: "ns", Name: "pod", UID: "uid-1"}}}
	}
	names := func(cs []*v1alpha1.IPClaim, err error) []string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, c := range cs {
			out = append(out, c.Name+"@"+c.Spec.ContainerID)
		}
		return out
	}
	a, b := mk("p-10-0-0-1", "c1"), mk("p-10-0-0-2", "c2")
	for _, cl := range []*v1alpha1.IPClaim{a, b} {
		if err := st.Create(ctx, cl); err != nil {
			t.Fatal(err)
		}
	}
	if got := names(st.ClaimsOfContainer("c1")); len(got) != 1 || got[0] != "p-10-0-0-1@c1" {
		t.Fatalf("ClaimsOfContainer(c1) = %v", got)
	}
	if got := names(st.ClaimsOfApp("p", app)); len(got) != 2 {
		t.Fatalf("ClaimsOfApp = %v", got)
	}
	if got := names(st.ClaimsOfPod("uid-1")); len(got) != 2 {
		t.Fatalf("ClaimsOfPod = %v", got)
	}
	if got := names(st.ClaimsOfNode("n1")); len(got) != 2 {
		t.Fatalf("ClaimsOfNode = %v", got)
	}
	if got := names(st.ReservedClaims("p")); len(got) != 0 {
		t.Fatalf("ReservedClaims = %v", got)
	}
	if got := names(st.ClaimsOfAddress("10.0.0.1")); len(got) != 2 {
		t.Fatalf("ClaimsOfAddress(10.0.0.1) = %v", got)
	}
	if got := names(st.ClaimsOfAddress("10.0.0.9")); len(got) != 0 {
		t.Fatalf("ClaimsOfAddress(10.0.0.9) = %v", got)
	}
	a = a.DeepCopy()
	a.Spec.ContainerID, a.Spec.State = "", v1alpha1.ClaimReserved
	if err := st.Update(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got := names(st.ClaimsOfContainer("c1")); len(got) != 0 {
		t.Fatalf("ClaimsOfContainer(c1) after the update = %v", got)
	}
	if got := names(st.ReservedClaims("p")); len(got) != 1 || got[0] != "p-10-0-0-1@" {
		t.Fatalf("ReservedClaims after the update = %v", got)
	}
	if err := st.Delete(ctx, b); err != nil {
		t.Fatal(err)
	}
	if got := names(st.ClaimsOfContainer("c2")); len(got) != 0 {
		t.Fatalf("ClaimsOfContainer(c2) after the delete = %v", got)
	}
	if got := names(st.ClaimsOfApp("p", app)); len(got) != 1 || got[0] != "p-10-0-0-1@" {
		t.Fatalf("ClaimsOfApp after the delete = %v", got)
	}
}

// TestStore_LiveClaimsOfAddress: the read bypasses the cache (here one
// that has seen no claim): it lists every claim of the address, in any
// pool, as soon as its create returned (as of now, or as of that create's
// resourceVersion or later), and only those (the field selector
// spec.address the IPClaim CRD declares matches exactly).
func TestStore_LiveClaimsOfAddress(t *testing.T) {
	cfg, c := startAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ca, err := cache.New(cfg, cachetrim.Options(cache.Options{Scheme: scheme(t)}))
	if err != nil {
		t.Fatal(err)
	}
	st := ipamserver.NewStore(blindCache{ca}, c, c)
	var last string // the resourceVersion of the last create
	for _, pa := range [][2]string{{"p", "10.0.0.1"}, {"q", "10.0.0.1"}, {"p", "10.0.0.10"}, {"p", "fd00::1"}} {
		addr := netip.MustParseAddr(pa[1])
		cl := &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.ClaimName(pa[0], addr)},
			Spec: v1alpha1.IPClaimSpec{Pool: pa[0], Address: addr.String(), State: v1alpha1.ClaimBound, Pod: v1alpha1.PodRef{Namespace: "ns", Name: "x", UID: "u"}}}
		mustCreate(t, c, cl)
		last = cl.ResourceVersion
	}
	for addr, want := range map[string][]string{"10.0.0.1": {"p-10-0-0-1", "q-10-0-0-1"}, "10.0.0.10": {"p-10-0-0-10"},
		"fd00::1": {"p-fd00-0000-0000-0000-0000-0000-0000-0001"}, "10.0.0.2": nil} {
		for _, rv := range []string{"", last} { // now; as of the last create or later
			got, err := st.LiveClaimsOfAddress(ctx, addr, rv)
			if err != nil {
				t.Fatalf("LiveClaimsOfAddress(%s, %q): %v", addr, rv, err)
			}
			var names []string
			for _, cl := range got {
				names = append(names, cl.Name)
			}
			sort.Strings(names)
			if !slices.Equal(names, want) {
				t.Errorf("LiveClaimsOfAddress(%s, %q) = %v, want %v", addr, rv, names, want)
			}
		}
	}
	done, stop := context.WithCancel(ctx)
	stop()
	if _, err := st.LiveClaimsOfAddress(done, "10.0.0.1", ""); !errors.Is(err, context.Canceled) {
		t.Errorf("LiveClaimsOfAddress with its context done: %v, want context.Canceled", err)
	}
}
