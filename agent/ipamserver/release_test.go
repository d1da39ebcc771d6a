package ipamserver_test

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/test/lockedbuf"
	"github.com/berth-io/berth/test/poll"
	"github.com/berth-io/berth/test/promtest"
)

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	v, n := promtest.Value(t, reg, name, nil)
	if n != 1 {
		t.Fatalf("%s: %d series, want 1", name, n)
	}
	return v
}

// serveDeferred serves with DeferRelease over a gatedStore, open (its
// writes pass) until the test closes it, and returns the configuration.
func serveDeferred(t *testing.T) (*harness, *gatedStore, ipamserver.Config) {
	t.Helper()
	var gs *gatedStore
	var cfg ipamserver.Config
	h := serve(t, func(c *ipamserver.Config) {
		c.DeferRelease = true
		gs = &gatedStore{Store: c.Store, gate: make(chan struct{})}
		gs.open.Store(true)
		c.Store = gs
		cfg = *c
	})
	return h, gs, cfg
}

// TestServer_deferRelease: with DeferRelease a DEL answers while the API
// server has not taken its release yet: the claim stays Bound and its
// record waits in the queue directory; the pod's next ADD and CHECK wait
// for the release; once the write goes through the address is Reserved
// for the app, the record is gone and the gauge back at 0.
func TestServer_deferRelease(t *testing.T) {
	h, gs, cfg := serveDeferred(t)
	queue := cfg.QueueDir
	p := h.pod("db-0", nil)
	add := protocol.Request{ContainerID: "c1", IfName: "eth0", PodNamespace: "ns", PodName: "db-0", PodUID: string(p.UID)}
	r := h.call(protocol.CommandAdd, add)
	if r.Error != nil {
		t.Fatalf("ADD: %+v", r.Error)
	}
	addr := strings.TrimSuffix(r.IPs[0].Address, "/24")
	gs.open.Store(false)

	start := time.Now()
	if d := h.call(protocol.CommandDel, protocol.Request{ContainerID: "c1", IfName: "eth0"}); d.Error != nil {
		t.Fatalf("DEL: %+v", d.Error)
	}
	t.Logf("DEL answered in %s with its write held", time.Since(start))
	record := protocol.QueueFile(queue, &protocol.Request{ContainerID: "c1", IfName: "eth0"})
	if _, err := os.Stat(record); err != nil {
		t.Fatalf("the answered DEL's record: %v", err)
	}
	poll.Until(t, 5*time.Second, "the release's write to begin", func() bool { return gs.waiting.Load() == 1 })
	if got := gauge(t, h.reg, "berth_agent_ipam_releases_pending"); got != 1 {
		t.Fatalf("releases pending = %v, want 1", got)
	}
	claims := h.store.Claims()
	if len(claims) != 1 || claims[0].Spec.State != v1alpha1.ClaimBound || claims[0].Spec.ContainerID != "c1" {
		t.Fatalf("claims before the release is written: %+v, want c1's Bound", claims)
	}

	// The pod's next sandbox and a CHECK of the old one wait for it.
	next := add
	next.ContainerID = "c2"
	added, checked := make(chan protocol.Response, 1), make(chan protocol.Response, 1)
	go func() { added <- h.call(protocol.CommandAdd, next) }()
	go func() { checked <- h.call(protocol.CommandCheck, add) }()
	select {
	case r := <-added:
		t.Fatalf("ADD of the pod's next sandbox answered before the release: %+v", r)
	case r := <-checked:
		t.Fatalf("CHECK answered before the release: %+v", r)
	case <-time.After(200 * time.Millisecond):
	}
	close(gs.gate)
	if r := <-checked; r.Error == nil {
		t.Error("CHECK of the released container passed")
	}
	if r := <-added; r.Error != nil || strings.TrimSuffix(r.IPs[0].Address, "/24") != addr {
		t.Fatalf("ADD of the pod's next sandbox: %+v, want %s back", r, addr)
	}
	poll.Until(t, 5*time.Second, "the record to go", func() bool { _, err := os.Stat(record); return errors.Is(err, os.ErrNotExist) })
	if got := gauge(t, h.reg, "berth_agent_ipam_releases_pending"); got != 0 {
		t.Errorf("releases pending = %v, want 0", got)
	}
	if n := testutil.CollectAndCount(h.reg, "berth_agent_ipam_release_duration_seconds"); n != 1 {
		t.Errorf("release histogram: %d series, want 1 (ok)", n)
	}
}

// TestServer_deferRelease_restart: a DEL answered while the API server
// refuses its release stays recorded when the agent stops; the next agent
// releases it before it serves.
func TestServer_deferRelease_restart(t *testing.T) {
	h, gs, cfg := serveDeferred(t)
	p := h.pod("db-0", nil)
	if r := h.call(protocol.CommandAdd, protocol.Request{ContainerID: "c1", IfName: "eth0", PodNamespace: "ns", PodName: "db-0", PodUID: string(p.UID)}); r.Error != nil {
		t.Fatalf("ADD: %+v", r.Error)
	}
	gs.down.Store(true)
	if d := h.call(protocol.CommandDel, protocol.Request{ContainerID: "c1", IfName: "eth0"}); d.Error != nil {
		t.Fatalf("DEL: %+v", d.Error)
	}
	poll.Until(t, 5*time.Second, "two failed releases", func() bool { return gs.tries.Load() >= 2 })
	h.stop()
	record := protocol.QueueFile(cfg.QueueDir, &protocol.Request{ContainerID: "c1", IfName: "eth0"})
	if _, err := os.Stat(record); err != nil {
		t.Fatalf("the unreleased DEL's record after the agent stopped: %v", err)
	}
	if c := h.store.Claims(); len(c) != 1 || c[0].Spec.State != v1alpha1.ClaimBound {
		t.Fatalf("claims after the agent stopped: %+v, want c1's Bound", c)
	}

	cfg.Store = h.store.View(false)
	cfg.Registerer = prometheus.NewRegistry()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	start(t, cfg)
	if c := h.store.Claims(); len(c) != 1 || c[0].Spec.State != v1alpha1.ClaimReserved {
		t.Fatalf("claims once the next agent serves: %+v, want one Reserved", c)
	}
	if _, err := os.Stat(record); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("record after the next agent ran it: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.AttachmentDir, protocol.FileName("c1", "eth0"))); err == nil {
		t.Error("attachment record still there")
	}
}

// TestServer_deferRelease_noQueueDir: when the DEL cannot be recorded
// (here a file stands where the queue directory should be), the DEL
// releases before it answers, and says why in the log.
func TestServer_deferRelease_noQueueDir(t *testing.T) {
	logs := &lockedbuf.Buffer{}
	h := serve(t, func(c *ipamserver.Config) {
		c.DeferRelease = true
		if err := os.WriteFile(c.QueueDir, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	p := h.pod("db-0", nil)
	if r := h.call(protocol.CommandAdd, protocol.Request{ContainerID: "c1", IfName: "eth0", PodNamespace: "ns", PodName: "db-0", PodUID: string(p.UID)}); r.Error != nil {
		t.Fatalf("ADD: %+v", r.Error)
	}
	if d := h.call(protocol.CommandDel, protocol.Request{ContainerID: "c1", IfName: "eth0"}); d.Error != nil {
		t.Fatalf("DEL: %+v", d.Error)
	}
	if c := h.store.Claims(); len(c) != 1 || c[0].Spec.State != v1alpha1.ClaimReserved {
		t.Fatalf("claims when the DEL answered: %+v, want one Reserved", c)
	}
	if want := `msg="cannot record the DEL in the queue directory; releasing before answering"`; !strings.Contains(logs.String(), want) {
		t.Errorf("log lacks %s:\n%s", want, logs)
	}
}

// TestServer_deferRelease_heldAddress: the next pod of an app whose only
// address is held by a pod whose DEL this agent answered and is still
// releasing waits for that release and gets the address, rather than
// failing as held.
func TestServer_deferRelease_heldAddress(t *testing.T) {
	h, gs, _ := serveDeferred(t)
	group := map[string]string{v1alpha1.AnnotationGroup: "g"}
	a, b := h.pod("a", group), h.pod("b", group)
	r := h.call(protocol.CommandAdd, protocol.Request{ContainerID: "c-a", IfName: "eth0", PodNamespace: "ns", PodName: "a", PodUID: string(a.UID)})
	if r.Error != nil {
		t.Fatalf("ADD a: %+v", r.Error)
	}
	gs.open.Store(false)
	if d := h.call(protocol.CommandDel, protocol.Request{ContainerID: "c-a", IfName: "eth0"}); d.Error != nil {
		t.Fatalf("DEL a: %+v", d.Error)
	}
	poll.Until(t, 5*time.Second, "a's release to wait at the gate", func() bool { return gs.waiting.Load() == 1 })
	h.store.RemovePod("ns", "a")

	added := make(chan protocol.Response, 1)
	go func() {
		added <- h.call(protocol.CommandAdd, protocol.Request{ContainerID: "c-b", IfName: "eth0", PodNamespace: "ns", PodName: "b", PodUID: string(b.UID)})
	}()
	select {
	case r := <-added:
		t.Fatalf("ADD b answered while a's release was pending: %+v", r)
	case <-time.After(200 * time.Millisecond):
	}
	close(gs.gate)
	if rb := <-added; rb.Error != nil || rb.IPs[0].Address != r.IPs[0].Address {
		t.Fatalf("ADD b: %+v, want a's %s", rb, r.IPs[0].Address)
	}
}

// TestServer_deferRelease_GC: CNI GC leaves the claims of a container whose
// DEL was answered and is still releasing to that release.
func TestServer_deferRelease_GC(t *testing.T) {
	h, gs, _ := serveDeferred(t)
	gs.open.Store(false)
	// A claim from before this agent's time (GC keeps those of recent ADDs).
	h.store.PutClaim(&v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: "p-10-0-0-9"}, Spec: v1alpha1.IPClaimSpec{Pool: "p", Address: "10.0.0.9",
		State: v1alpha1.ClaimBound, ContainerID: "c-old", Interface: "eth0", Node: "n1", Pod: v1alpha1.PodRef{Namespace: "ns", Name: "old", UID: "uid-old"},
		App: &v1alpha1.App{Kind: v1alpha1.AppGroup, Namespace: "ns", Name: "g"}}})
	if d := h.call(protocol.CommandDel, protocol.Request{ContainerID: "c-old", IfName: "eth0"}); d.Error != nil {
		t.Fatalf("DEL: %+v", d.Error)
	}
	poll.Until(t, 5*time.Second, "the release to wait at the gate", func() bool { return gs.waiting.Load() == 1 })
	if g := h.call(protocol.CommandGC, protocol.Request{}); g.Error != nil {
		t.Fatalf("GC: %+v", g.Error)
	}
	if n := gs.tries.Load(); n != 1 {
		t.Fatalf("%d claim writes tried, want 1 (the DEL's): GC released the claim too", n)
	}
	close(gs.gate)
	poll.Until(t, 5*time.Second, "the claim to be reserved", func() bool {
		c := h.store.Claims()
		return len(c) == 1 && c[0].Spec.State == v1alpha1.ClaimReserved
	})
}
