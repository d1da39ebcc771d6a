package ipamserver_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-io/berth/agent/crisandbox"
	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/test/containerdtest"
	"github.com/berth-io/berth/test/poll"
)

// ageAttachments makes the ADDs recorded in dir look an hour old, then
// restarts the server with cfg: garbage collection keeps off ADDs younger
// than two minutes, also across restarts.
func ageAttachments(t *testing.T, h *harness, cfg ipamserver.Config) *harness {
	t.Helper()
	records, err := filepath.Glob(filepath.Join(cfg.AttachmentDir, "*.json"))
	if err != nil || len(records) == 0 {
		t.Fatalf("attachment records %v, %v", records, err)
	}
	for _, f := range records {
		if err := os.Chtimes(f, time.Now().Add(-time.Hour), time.Now().Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	h.stop()
	cfg.Registerer = prometheus.NewRegistry()
	h2 := start(t, cfg)
	h2.store = h.store
	return h2
}

// TestServer_sweep: the agent releases the claims of sandboxes the
// runtime (a real containerd, through CRI) no longer has, whether or not
// a DEL came; and it keeps the claim of a pod whose object was
// force-deleted while its sandbox still runs, since the address may
// still answer on the network.
func TestServer_sweep(t *testing.T) {
	cd := containerdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	forced, _, err := cd.RunPod(ctx, "ns", "db-0", "uid-db-0", nil)
	if err != nil {
		t.Fatal(err)
	}
	lister, err := crisandbox.New(crisandbox.Config{Endpoint: cd.Address})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lister.Close() })

	var cfg ipamserver.Config
	h := serve(t, func(c *ipamserver.Config) { cfg = *c })
	add := func(pod, container string) {
		p := h.pod(pod, nil)
		req := protocol.Request{ContainerID: container, IfName: "eth0", Netns: "/var/run/netns/" + pod, PodNamespace: "ns", PodName: pod, PodUID: string(p.UID), Network: "berth"}
		if r := h.call(protocol.CommandAdd, req); r.Error != nil {
			t.Fatalf("ADD %s: %+v", pod, r.Error)
		}
	}
	add("db-0", forced)
	add("db-1", "lost-in-a-reboot") // the runtime has no such sandbox
	cfg.Sandboxes, cfg.SweepInterval = lister, 100*time.Millisecond
	h = ageAttachments(t, h, cfg)

	state := func(pod string) v1alpha1.ClaimState {
		for _, c := range h.store.Claims() {
			if c.Spec.Pod.Name == pod {
				return c.Spec.State
			}
		}
		return ""
	}
	// db-0 is force-deleted: its object is gone, its sandbox runs on.
	h.store.RemovePod("ns", "db-0")
	h.store.RemovePod("ns", "db-1")
	poll.Until(t, 10*time.Second, "the sweep to release the claim of the sandbox the runtime lost", func() bool {
		return state("db-1") == v1alpha1.ClaimReserved
	})
	sweeps := counter(t, h.reg, "berth_ipam_gc_runs_total", "result", "ok")
	poll.Until(t, 10*time.Second, "three more sweeps", func() bool {
		return counter(t, h.reg, "berth_ipam_gc_runs_total", "result", "ok") >= sweeps+3
	})
	if got := state("db-0"); got != v1alpha1.ClaimBound {
		t.Fatalf("the claim of force-deleted db-0, whose sandbox still runs, is %s, want Bound", got)
	}

	// The runtime ends the sandbox (kubelet's teardown; here with no DEL
	// at all): the next sweep releases the claim for db-0's successor.
	if _, err := cd.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: forced}); err != nil {
		t.Fatal(err)
	}
	if _, err := cd.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: forced}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the sweep to release db-0's claim once its sandbox is gone", func() bool {
		return state("db-0") == v1alpha1.ClaimReserved
	})
	if got := counter(t, h.reg, "berth_ipam_gc_claims_total", "result", "released"); got != 2 {
		t.Errorf("berth_ipam_gc_claims_total{result=released} = %v, want 2", got)
	}
}

// fakeRuntime is a stand-in for the runtime's CRI that lists no
// sandboxes at all, as one that lost its state would.
type fakeRuntime struct{}

func (fakeRuntime) List(context.Context) ([]crisandbox.Sandbox, error) { return nil, nil }

// TestServer_sweep_refusesEmptyList_fakeRuntime: a runtime that suddenly
// lists nothing on a busy node releases nothing: the sweep is refused
// (counted), and the pods' claims stay Bound.
func TestServer_sweep_refusesEmptyList_fakeRuntime(t *testing.T) {
	var cfg ipamserver.Config
	h := serve(t, func(c *ipamserver.Config) { cfg = *c })
	for _, pod := range []string{"a", "b", "c", "d", "e", "f"} {
		p := h.pod(pod, nil)
		req := protocol.Request{ContainerID: "c-" + pod, IfName: "eth0", Netns: "/var/run/netns/" + pod, PodNamespace: "ns", PodName: pod, PodUID: string(p.UID), Network: "berth"}
		if r := h.call(protocol.CommandAdd, req); r.Error != nil {
			t.Fatalf("ADD %s: %+v", pod, r.Error)
		}
	}
	for _, pod := range []string{"a", "b", "c", "d", "e", "f"} {
		h.store.RemovePod("ns", pod) // no pod check saves them
	}
	cfg.Sandboxes, cfg.SweepInterval = fakeRuntime{}, 100*time.Millisecond
	h = ageAttachments(t, h, cfg)
	poll.Until(t, 10*time.Second, "two refused sweeps", func() bool {
		return counter(t, h.reg, "berth_ipam_gc_runs_total", "result", "refused") >= 2
	})
	for _, c := range h.store.Claims() {
		if c.Spec.State != v1alpha1.ClaimBound {
			t.Errorf("claim %s is %s after refused sweeps, want Bound", c.Name, c.Spec.State)
		}
	}
}
