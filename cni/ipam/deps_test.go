package ipam_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestBinary_deps: berth-ipam asks the agent and links no Kubernetes
// client (or any k8s.io package); nor net/http and the TLS and x509 it
// brings, whose size and initialization every CNI call would pay.
func TestBinary_deps(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "list", "-deps", "./cmd/berth-ipam").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "k8s.io/") || strings.HasPrefix(p, "sigs.k8s.io/") ||
			p == "net/http" || p == "crypto/tls" || p == "crypto/x509" {
			t.Errorf("berth-ipam links %s", p)
		}
	}
}
