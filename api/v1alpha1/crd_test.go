package v1alpha1_test

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/test/envtest"
)

func TestClaimName(t *testing.T) {
	for _, tc := range []struct{ name, pool, addr, want string }{
		{"ipv4", "pool-a", "10.244.0.7", "pool-a-10-244-0-7"},
		{"ipv6 expanded", "v6", "fd00::1", "v6-fd00-0000-0000-0000-0000-0000-0000-0001"},
		{"ipv6 trailing zeros", "v6", "fd00::", "v6-fd00-0000-0000-0000-0000-0000-0000-0000"},
		{"ipv4 mapped", "p", "::ffff:10.0.0.1", "p-10-0-0-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := v1alpha1.ClaimName(tc.pool, netip.MustParseAddr(tc.addr)); got != tc.want {
				t.Fatalf("ClaimName(%q, %s) = %q, want %q", tc.pool, tc.addr, got, tc.want)
			}
		})
	}
}

// TestCRDs installs the generated CRDs in a real API server: defaults apply,
// the CIDR is immutable, one claim per name.
func TestCRDs(t *testing.T) {
	cfg := envtest.Start(t, envtest.Options{CRDDirectoryPaths: []string{filepath.Join("..", "..", "deploy", "base", "crds")}})
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	pool := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24"}}
	if err := c.Create(ctx, pool); err != nil {
		t.Fatalf("create pool: %v", err)
	}
	if pool.Spec.Retain == nil || !*pool.Spec.Retain {
		t.Errorf("retain default = %v, want true", pool.Spec.Retain)
	}
	if ttl, err := pool.Spec.ParseReservationTTL(); pool.Spec.ReservationTTL != "24h" || err != nil || ttl != v1alpha1.DefaultReservationTTL {
		t.Errorf("reservationTTL default = %v, want %v", pool.Spec.ReservationTTL, v1alpha1.DefaultReservationTTL)
	}
	if pool.Spec.ReclaimReservations == nil || !*pool.Spec.ReclaimReservations {
		t.Errorf("reclaimReservations default = %v, want true", pool.Spec.ReclaimReservations)
	}
	pool.Spec.CIDR = "10.2.0.0/24"
	if err := c.Update(ctx, pool); err == nil || !strings.Contains(err.Error(), "cidr is immutable") {
		t.Errorf("update cidr: err = %v, want cidr is immutable", err)
	}

	addr := netip.MustParseAddr("10.1.0.5")
	claim := func() *v1alpha1.IPClaim {
		return &v1alpha1.IPClaim{
			ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.ClaimName("p", addr)},
			Spec: v1alpha1.IPClaimSpec{Pool: "p", Address: addr.String(), State: v1alpha1.ClaimBound,
				Pod: v1alpha1.PodRef{Namespace: "ns", Name: "a", UID: "u1"}},
		}
	}
	if err := c.Create(ctx, claim()); err != nil {
		t.Fatalf("create claim: %v", err)
	}
	if err := c.Create(ctx, claim()); err == nil {
		t.Fatal("second claim of one address created")
	}
	bad := claim()
	bad.Name = "p-10-1-0-6"
	bad.Spec.State = "Lost"
	if err := c.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), "spec.state") {
		t.Errorf("claim with state Lost: err = %v, want a spec.state error", err)
	}
}
