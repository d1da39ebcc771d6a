package v1alpha1_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/test/envtest"
)

var (
	crdDir       = filepath.Join("..", "..", "deploy", "base", "crds")
	admissionDir = filepath.Join("..", "..", "deploy", "base", "admission")
)

func newClient(t *testing.T, cfg *rest.Config) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ippool(name, cidr string, mod ...func(*v1alpha1.IPPoolSpec)) *v1alpha1.IPPool {
	p := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.IPPoolSpec{CIDR: cidr}}
	for _, m := range mod {
		m(&p.Spec)
	}
	return p
}

func ranges(incl ...string) func(*v1alpha1.IPPoolSpec) {
	return func(s *v1alpha1.IPPoolSpec) { s.IncludeRanges = incl }
}

// TestCRDs_ippoolValidation: the API server rejects an IPPool that
// berth-ipam could not use, saying what to fix, and admits the forms
// berth-ipam parses.
func TestCRDs_ippoolValidation(t *testing.T) {
	c := newClient(t, envtest.Start(t, envtest.Options{CRDDirectoryPaths: []string{crdDir}}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	for _, tc := range []struct {
		name string
		spec v1alpha1.IPPoolSpec
		want string // "" admitted
	}{
		{name: "ttl in days", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ReservationTTL: "1d"},
			want: "reservationTTL 1d: want a positive duration of Go, a number and a unit (h, m, s, ms, us, ns) such as 24h, 90m or 1h30m; days are not a unit (7 days: 168h)"},
		{name: "ttl zero", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ReservationTTL: "0s"}, want: "reservationTTL 0s: want a positive duration"},
		{name: "ttl negative", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ReservationTTL: "-1h"}, want: "reservationTTL -1h: want a positive duration"},
		{name: "ttl without unit", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ReservationTTL: "3600"}, want: "reservationTTL 3600: want"},
		{name: "ttl mixed units", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ReservationTTL: "1h30m"}},
		{name: "cidr not a cidr", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0"}, want: "cidr 10.1.0.0: want a subnet in CIDR notation, e.g. 10.244.0.0/24 or fd00:10:244::/64"},
		{name: "cidr prefix too long", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/33"}, want: "cidr 10.1.0.0/33: want a subnet in CIDR notation"},
		{name: "cidr host bits", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.7/24"}, want: "cidr 10.1.0.7/24: bits are set after the prefix length; write the network address"},
		{name: "ipv6 cidr host bits", spec: v1alpha1.IPPoolSpec{CIDR: "fd00::1/64"}, want: "cidr fd00::1/64: bits are set after the prefix length"},
		{name: "ipv6", spec: v1alpha1.IPPoolSpec{CIDR: "fd00:10:244::/64", Gateway: "fd00:10:244::1",
			IncludeRanges: []string{"fd00:10:244::100-fd00:10:244::1ff", "fd00:10:244::1:0/112", "fd00:10:244::7"}}},
		{name: "gateway not an address", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", Gateway: "10.1.0"}, want: "gateway 10.1.0: want an IP address"},
		{name: "gateway outside", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", Gateway: "10.2.0.1"}, want: "gateway 10.2.0.1 is not inside cidr 10.1.0.0/24"},
		{name: "gateway other family", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", Gateway: "fd00::1"}, want: "gateway fd00::1 is not inside cidr 10.1.0.0/24 (or not of its IP family)"},
		{name: "route destination not a cidr", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", Routes: []v1alpha1.Route{{Destination: "default"}}},
			want: "route destination default: want a CIDR, e.g. 0.0.0.0/0 or 10.0.0.0/8"},
		{name: "route gateway not an address", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", Routes: []v1alpha1.Route{{Destination: "0.0.0.0/0", Gateway: "gw"}}},
			want: "route gateway gw: want an IP address"},
		{name: "route other family", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", Routes: []v1alpha1.Route{{Destination: "0.0.0.0/0"}, {Destination: "::/0"}}},
			want: "routes: each destination must be of the IP family of cidr 10.1.0.0/24"},
		{name: "range garbage", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", IncludeRanges: []string{"10.1.0.10..10.1.0.20"}},
			want: "includeRanges entry 10.1.0.10..10.1.0.20: want a CIDR (10.244.0.64/26), an address (10.244.0.9), or two addresses joined by a dash"},
		{name: "range three addresses", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ExcludeRanges: []string{"10.1.0.1-10.1.0.2-10.1.0.3"}},
			want: "excludeRanges entry 10.1.0.1-10.1.0.2-10.1.0.3: want a CIDR"},
		{name: "range backwards", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", IncludeRanges: []string{"10.1.0.99-10.1.0.10"}},
			want: "includeRanges entry 10.1.0.99-10.1.0.10: the range ends before it starts; write the lower address first"},
		{name: "ipv6 range backwards", spec: v1alpha1.IPPoolSpec{CIDR: "fd00::/64", ExcludeRanges: []string{"fd00::a-fd00::9"}},
			want: "excludeRanges entry fd00::a-fd00::9: the range ends before it starts"},
		{name: "range outside", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", IncludeRanges: []string{"10.1.0.10-10.1.0.20", "10.1.0.250-10.1.1.5"}},
			want: "includeRanges: each entry must lie inside cidr 10.1.0.0/24 and be of its IP family"},
		{name: "range cidr outside", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ExcludeRanges: []string{"10.1.0.0/23"}},
			want: "excludeRanges: each entry must lie inside cidr 10.1.0.0/24"},
		{name: "range address outside", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ExcludeRanges: []string{"10.9.0.1"}},
			want: "excludeRanges: each entry must lie inside cidr 10.1.0.0/24"},
		{name: "every range form", spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", Gateway: "10.1.0.1", Routes: []v1alpha1.Route{{Destination: "10.0.0.0/8", Gateway: "10.1.0.254"}},
			IncludeRanges: []string{"10.1.0.10-10.1.0.99", "10.1.0.128/26", "10.1.0.200", "10.1.0.9 - 10.1.0.10"}, ExcludeRanges: []string{"10.1.0.50-10.1.0.50"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: strings.ReplaceAll(tc.name, " ", "-")}, Spec: tc.spec}
			err := c.Create(ctx, p)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			if err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v\nwant Invalid with %q", err, tc.want)
			}
		})
	}
}

// waitEffective retries try until it fails with an error that contains
// want: a new ValidatingAdmissionPolicy takes effect a moment after it is
// created. undo reverts what an attempt admitted meanwhile.
func waitEffective(t *testing.T, want string, try func() error, undo func()) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := try()
		if err != nil && strings.Contains(err.Error(), want) {
			return
		}
		if err == nil {
			undo()
		}
		if time.Now().After(deadline) {
			t.Fatalf("the policy is not in effect after 30s: last err = %v, want %q", err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestValidatingAdmissionPolicy_ippoolOverlap applies
// deploy/base/admission/ippool-overlap.yaml: a pool whose addresses (its
// includeRanges, or its cidr) overlap another pool's is rejected, on create
// and on update, naming the other pool; disjoint pools, also in one subnet,
// are admitted.
func TestValidatingAdmissionPolicy_ippoolOverlap(t *testing.T) {
	cfg := envtest.Start(t, envtest.Options{CRDDirectoryPaths: []string{crdDir}})
	c := newClient(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if err := c.Create(ctx, ippool("web", "10.10.0.0/24")); err != nil {
		t.Fatal(err)
	}
	envtest.Apply(t, cfg, []string{filepath.Join(admissionDir, "ippool-overlap.yaml")})
	probe := ippool("probe", "10.10.0.128/25")
	waitEffective(t, "overlap those of IPPool web", func() error { return c.Create(ctx, probe.DeepCopy()) },
		func() { _ = c.Delete(ctx, probe) })

	for _, step := range []struct {
		name string
		pool *v1alpha1.IPPool
		want string // "" admitted
	}{
		{name: "inside another's cidr", pool: ippool("inside", "10.10.0.64/26"),
			want: "the addresses of IPPool inside overlap those of IPPool web (cidr 10.10.0.0/24): one address could go to two pods; make the pools disjoint (cidr, includeRanges, excludeRanges)"},
		{name: "around another's cidr", pool: ippool("around", "10.10.0.0/16"), want: "overlap those of IPPool web"},
		{name: "same cidr", pool: ippool("same", "10.10.0.0/24"), want: "overlap those of IPPool web"},
		{name: "a range in another's cidr", pool: ippool("range-in", "10.10.0.0/23", ranges("10.10.1.0/25", "10.10.0.250-10.10.1.3")), want: "overlap those of IPPool web"},
		{name: "a range around another's cidr", pool: ippool("range-around", "10.0.0.0/8", ranges("10.9.255.0-10.10.3.0")), want: "overlap those of IPPool web"},
		{name: "next to it", pool: ippool("next", "10.10.1.0/24")},
		// One subnet, split by includeRanges.
		{name: "first half", pool: ippool("a", "10.11.0.0/24", ranges("10.11.0.10-10.11.0.20"))},
		{name: "second half", pool: ippool("b", "10.11.0.0/24", ranges("10.11.0.21-10.11.0.30", "10.11.0.128/26"))},
		{name: "a cidr range overlapping a range", pool: ippool("c1", "10.11.0.0/24", ranges("10.11.0.16/30")),
			want: "the addresses of IPPool c1 overlap those of IPPool a (cidr 10.11.0.0/24, includeRanges 10.11.0.10-10.11.0.20)"},
		{name: "a cidr range under a range", pool: ippool("c2", "10.11.0.0/24", ranges("10.11.0.0/28")), want: "overlap those of IPPool a"},
		{name: "a range over a cidr range", pool: ippool("c3", "10.11.0.0/24", ranges("10.11.0.100-10.11.0.200")), want: "overlap those of IPPool b"},
		{name: "an address in a range", pool: ippool("c4", "10.11.0.0/24", ranges("10.11.0.30")), want: "overlap those of IPPool b"},
		{name: "the subnet's rest", pool: ippool("c5", "10.11.0.0/24", ranges("10.11.0.0/29", "10.11.0.31-10.11.0.127", "10.11.0.192/26"))},
		// Exclusions count: a pool of the subnet that the other's
		// excludeRanges (or gateway) leave out, as the local cluster's pool
		// "pods" leaves 10.244.0.240/28 to test pools.
		{name: "a subnet with a hole", pool: ippool("holed", "10.12.0.0/24", func(s *v1alpha1.IPPoolSpec) {
			s.Gateway, s.ExcludeRanges = "10.12.0.1", []string{"10.12.0.240/28", "10.12.0.2-10.12.0.9"}
		})},
		{name: "in the hole", pool: ippool("hole", "10.12.0.0/24", ranges("10.12.0.240/30"))},
		{name: "in the hole and the gateway", pool: ippool("hole-gw", "10.12.0.0/24", ranges("10.12.0.1-10.12.0.9", "10.12.0.244/30"))},
		{name: "in the hole and one more", pool: ippool("hole-more", "10.12.0.0/24", ranges("10.12.0.248-10.12.0.255", "10.12.0.10-10.12.0.11")),
			want: "overlap those of IPPool holed (cidr 10.12.0.0/24, excludeRanges 10.12.0.240/28, 10.12.0.2-10.12.0.9)"},
		{name: "over the hole's edge", pool: ippool("hole-edge", "10.12.0.0/24", ranges("10.12.0.236-10.12.0.239")), want: "overlap those of IPPool holed"},
		{name: "carved by its own exclusion", pool: ippool("carved", "10.12.0.0/24", func(s *v1alpha1.IPPoolSpec) {
			s.IncludeRanges, s.ExcludeRanges = []string{"10.12.0.0/28"}, []string{"10.12.0.0/28"}
		})},
		// IPv6, and the families never overlap.
		{name: "ipv6", pool: ippool("v6", "fd00:10::/64", ranges("fd00:10::100-fd00:10::1ff"))},
		{name: "ipv6 overlapping", pool: ippool("v6b", "fd00:10::/119"), want: "overlap those of IPPool v6"},
		{name: "ipv6 disjoint", pool: ippool("v6c", "fd00:10::/64", ranges("fd00:10::200-fd00:10::2ff", "fd00:10::ff"))},
		{name: "ipv6 subnet with holes", pool: ippool("v6d", "fd00:11::/64", func(s *v1alpha1.IPPoolSpec) {
			s.Gateway, s.ExcludeRanges = "fd00:11::1", []string{"fd00:11::ff00/120", "fd00:11::2-fd00:11::ff"}
		})},
		{name: "ipv6 in the holes", pool: ippool("v6e", "fd00:11::/64", ranges("fd00:11::1-fd00:11::ff", "fd00:11::ff80/121"))},
		{name: "ipv6 past the holes", pool: ippool("v6f", "fd00:11::/64", ranges("fd00:11::100-fd00:11::101")), want: "overlap those of IPPool v6d"},
	} {
		t.Run(step.name, func(t *testing.T) {
			err := c.Create(ctx, step.pool)
			if step.want == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			if err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), step.want) {
				t.Fatalf("err = %v\nwant Invalid with %q", err, step.want)
			}
		})
	}

	// The local cluster's pools, and the pool test/e2e makes beside them
	// (in the addresses "pods" excludes).
	envtest.Apply(t, cfg, []string{filepath.Join("..", "..", "deploy", "local", "ippool.yaml")})
	e2e := ippool("e2e", "10.244.0.0/24", ranges("10.244.0.240/30"))
	e2e.Spec.Gateway = "10.244.0.1"
	if err := c.Create(ctx, e2e); err != nil {
		t.Errorf("the pool of test/e2e beside deploy/local's: %v", err)
	}

	// An update into overlap is rejected; one that stays clear of the
	// others (or overlaps only the pool's old self) is admitted.
	var b v1alpha1.IPPool
	if err := c.Get(ctx, client.ObjectKey{Name: "b"}, &b); err != nil {
		t.Fatal(err)
	}
	b.Spec.IncludeRanges = []string{"10.11.0.15-10.11.0.30"}
	if err := c.Update(ctx, &b); err == nil || !strings.Contains(err.Error(), "the addresses of IPPool b overlap those of IPPool a") {
		t.Errorf("update of b into a: err = %v, want an overlap with a", err)
	}
	b.Spec.IncludeRanges = []string{"10.11.0.22-10.11.0.30", "10.11.0.128/26"}
	if err := c.Update(ctx, &b); err != nil {
		t.Errorf("update of b over its own addresses: %v", err)
	}
	// A change that leaves the spec alone is not checked.
	if err := c.Get(ctx, client.ObjectKey{Name: "b"}, &b); err != nil {
		t.Fatal(err)
	}
	b.Labels = map[string]string{"team": "x"}
	if err := c.Update(ctx, &b); err != nil {
		t.Errorf("label b: %v", err)
	}
}

// TestValidatingAdmissionPolicy_ippoolOverlap_storedBefore: pools that
// overlapped before the policy existed can still be relabelled and
// deleted; editing the newer one's spec must make it disjoint.
func TestValidatingAdmissionPolicy_ippoolOverlap_storedBefore(t *testing.T) {
	cfg := envtest.Start(t, envtest.Options{CRDDirectoryPaths: []string{crdDir}})
	c := newClient(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, p := range []*v1alpha1.IPPool{ippool("old", "10.20.0.0/24"), ippool("new", "10.20.0.0/25")} {
		if err := c.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	envtest.Apply(t, cfg, []string{filepath.Join(admissionDir, "ippool-overlap.yaml")})
	probe := ippool("probe", "10.20.0.0/16")
	waitEffective(t, "overlap those of IPPool", func() error { return c.Create(ctx, probe.DeepCopy()) },
		func() { _ = c.Delete(ctx, probe) })

	var p v1alpha1.IPPool
	if err := c.Get(ctx, client.ObjectKey{Name: "new"}, &p); err != nil {
		t.Fatal(err)
	}
	p.Labels = map[string]string{"x": "y"}
	if err := c.Update(ctx, &p); err != nil {
		t.Errorf("relabel an overlapping pool: %v", err)
	}
	p.Spec.Gateway = "10.20.0.1"
	if err := c.Update(ctx, &p); err == nil || !strings.Contains(err.Error(), "overlap those of IPPool old") {
		t.Errorf("change the spec of an overlapping pool: err = %v, want an overlap with old", err)
	}
	if err := c.Delete(ctx, &p); err != nil {
		t.Errorf("delete an overlapping pool: %v", err)
	}
}

// agentClient is a client acting as berth-agent's service account with
// the user extras a pod's bound token gives (node: its node; "" none).
func agentClient(t *testing.T, cfg *rest.Config, node string) client.Client {
	cfg = rest.CopyConfig(cfg)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:berth-system:berth-agent",
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:berth-system", "system:authenticated"},
	}
	if node != "" {
		cfg.Impersonate.Extra = map[string][]string{"authentication.kubernetes.io/node-name": {node}}
	}
	return newClient(t, cfg)
}

func claim(name, node string, state v1alpha1.ClaimState) *v1alpha1.IPClaim {
	return &v1alpha1.IPClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1alpha1.LabelNode: node}},
		Spec: v1alpha1.IPClaimSpec{Pool: "p", Address: "10.1.0.1", Node: node, State: state,
			Pod: v1alpha1.PodRef{Namespace: "ns", Name: name, UID: types.UID("uid-" + name)}},
	}
}

// TestValidatingAdmissionPolicy_agentClaims applies deploy/base/rbac.yaml
// and deploy/base/admission/agent-claims.yaml and acts as berth-agent
// (impersonation, with the node extra of a bound token): the agent of
// node-a writes node-a's claims and takes a Reserved claim of node-b, but
// cannot change or delete node-b's Bound claim, nor write a claim onto
// node-b; without the node extra it writes nothing.
func TestValidatingAdmissionPolicy_agentClaims(t *testing.T) {
	cfg := envtest.Start(t, envtest.Options{CRDDirectoryPaths: []string{crdDir}})
	admin := newClient(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	envtest.Apply(t, cfg, []string{filepath.Join("..", "..", "deploy", "base", "rbac.yaml")}, "ClusterRole", "ClusterRoleBinding")
	envtest.Apply(t, cfg, []string{filepath.Join(admissionDir, "agent-claims.yaml")})
	agentA, noNode := agentClient(t, cfg, "node-a"), agentClient(t, cfg, "")

	probe := claim("probe", "node-b", v1alpha1.ClaimBound)
	waitEffective(t, "may write only IPClaims of its node", func() error { return agentA.Create(ctx, probe.DeepCopy()) },
		func() { _ = admin.Delete(ctx, probe) })

	mustGet := func(name string) *v1alpha1.IPClaim {
		t.Helper()
		var c v1alpha1.IPClaim
		if err := admin.Get(ctx, client.ObjectKey{Name: name}, &c); err != nil {
			t.Fatal(err)
		}
		return &c
	}
	denied := func(what string, err error, want string) {
		t.Helper()
		if err == nil || !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want Forbidden with %q", what, err, want)
		}
	}
	allowed := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}

	// Its own node's claims: create, update (release to Reserved), delete.
	own := claim("own", "node-a", v1alpha1.ClaimBound)
	allowed("node-a creates a claim of node-a", agentA.Create(ctx, own))
	own.Spec.State, own.Spec.ContainerID = v1alpha1.ClaimReserved, ""
	allowed("node-a reserves its claim", agentA.Update(ctx, own))
	allowed("node-a deletes its claim", agentA.Delete(ctx, own))

	// Another node's claims.
	denied("node-a creates a claim of node-b", agentA.Create(ctx, claim("onto-b", "node-b", v1alpha1.ClaimBound)),
		"berth-agent on node node-a may write only IPClaims of its node; this one would be of node node-b")
	bound, reserved := claim("bound-b", "node-b", v1alpha1.ClaimBound), claim("reserved-b", "node-b", v1alpha1.ClaimReserved)
	for _, c := range []*v1alpha1.IPClaim{bound, reserved} {
		if err := admin.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	take := func(c *v1alpha1.IPClaim) *v1alpha1.IPClaim {
		c = c.DeepCopy()
		c.Spec.Node, c.Labels[v1alpha1.LabelNode], c.Spec.State = "node-a", "node-a", v1alpha1.ClaimBound
		c.Spec.Pod = v1alpha1.PodRef{Namespace: "ns", Name: "new", UID: "uid-new"}
		return c
	}
	denied("node-a takes node-b's Bound claim", agentA.Update(ctx, take(bound)),
		"berth-agent on node node-a may not change IPClaim bound-b, Bound on node node-b: only a Reserved claim of another node may be taken")
	b := bound.DeepCopy()
	b.Spec.State = v1alpha1.ClaimReserved
	denied("node-a reserves node-b's Bound claim in place", agentA.Update(ctx, b), "may write only IPClaims of its node")
	denied("node-a deletes node-b's Bound claim", agentA.Delete(ctx, bound), "berth-agent on node node-a may not delete IPClaim bound-b of node node-b")
	r := reserved.DeepCopy()
	r.Spec.ReservedUntil = &metav1.Time{Time: time.Now().Add(time.Hour)}
	denied("node-a edits node-b's reservation in place", agentA.Update(ctx, r), "may write only IPClaims of its node")
	allowed("node-a takes node-b's Reserved claim", agentA.Update(ctx, take(reserved)))
	if got := mustGet("reserved-b"); got.Spec.Node != "node-a" || got.Spec.State != v1alpha1.ClaimBound {
		t.Errorf("reserved-b after the take: node %s state %s, want node-a Bound", got.Spec.Node, got.Spec.State)
	}
	mine := mustGet("reserved-b")
	mine.Labels[v1alpha1.LabelNode] = "node-b"
	denied("node-a labels its claim as node-b's", agentA.Update(ctx, mine), "may not label an IPClaim berth.io/node=node-b")

	// A token that names no node (a long-lived Secret token) writes nothing.
	denied("no node: create", noNode.Create(ctx, claim("no-node", "node-a", v1alpha1.ClaimBound)),
		"berth-agent's credentials name no node (user extra authentication.kubernetes.io/node-name is missing)")
	denied("no node: delete", noNode.Delete(ctx, mustGet("reserved-b")), "name no node")

	// Other users (berth-controller, an admin repairing by hand) are not
	// concerned.
	allowed("admin deletes node-b's Bound claim", admin.Delete(ctx, bound))
	var se *apierrors.StatusError
	if err := admin.Get(ctx, client.ObjectKey{Name: "bound-b"}, &v1alpha1.IPClaim{}); !errors.As(err, &se) || !apierrors.IsNotFound(err) {
		t.Errorf("bound-b after the admin's delete: %v, want not found", err)
	}
}

// TestValidatingAdmissionPolicy_agentClaims_boundToken: the node comes
// from the token itself. A token bound to a pod on node-a (what kubelet
// mounts into the agent's pod) lets berth-agent write node-a's claims and
// not node-b's; a token bound to nothing (a token Secret) writes none.
func TestValidatingAdmissionPolicy_agentClaims_boundToken(t *testing.T) {
	cfg := envtest.Start(t, envtest.Options{CRDDirectoryPaths: []string{crdDir}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := authenticationv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	admin, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	envtest.Apply(t, cfg, []string{filepath.Join("..", "..", "deploy", "base", "rbac.yaml")}, "ClusterRole", "ClusterRoleBinding")
	envtest.Apply(t, cfg, []string{filepath.Join(admissionDir, "agent-claims.yaml")})

	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "berth-system", Name: "berth-agent"}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "berth-system", Name: "berth-agent-x"},
		Spec: corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "berth-agent", Containers: []corev1.Container{{Name: "agent", Image: "berth"}}}}
	for _, obj := range []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "berth-system"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, sa, pod,
	} {
		if err := admin.Create(ctx, obj); err != nil {
			t.Fatalf("create %T: %v", obj, err)
		}
	}
	tokenClient := func(bound *authenticationv1.BoundObjectReference) client.Client {
		t.Helper()
		tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{BoundObjectRef: bound}}
		if err := admin.SubResource("token").Create(ctx, sa, tr); err != nil {
			t.Fatalf("token request: %v", err)
		}
		return newClient(t, &rest.Config{Host: cfg.Host, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: cfg.CAData}})
	}
	agentA := tokenClient(&authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID})
	unbound := tokenClient(nil)

	probe := claim("probe", "node-b", v1alpha1.ClaimBound)
	waitEffective(t, "berth-agent on node node-a may write only IPClaims of its node; this one would be of node node-b",
		func() error { return agentA.Create(ctx, probe.DeepCopy()) }, func() { _ = admin.Delete(ctx, probe) })
	if err := agentA.Create(ctx, claim("own", "node-a", v1alpha1.ClaimBound)); err != nil {
		t.Errorf("the agent of node-a creates a claim of node-a: %v", err)
	}
	if err := unbound.Create(ctx, claim("unbound", "node-a", v1alpha1.ClaimBound)); err == nil || !strings.Contains(err.Error(), "credentials name no node") {
		t.Errorf("an unbound token creates a claim: err = %v, want denied for naming no node", err)
	}
}
