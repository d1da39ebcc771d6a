package ipam_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestBinary_noAPIClient: berth-ipam asks the agent and links no
// Kubernetes client (or any k8s.io package).
func TestBinary_noAPIClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "list", "-deps", "./cmd/berth-ipam").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "k8s.io/") || strings.HasPrefix(p, "sigs.k8s.io/") {
			t.Errorf("berth-ipam links %s", p)
		}
	}
}
