package ipamserver_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
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
	sweeps := counter(t, h.reg, "berth_agent_ipam_gc_runs_total", "result", "ok")
	poll.Until(t, 10*time.Second, "three more sweeps", func() bool {
		return counter(t, h.reg, "berth_agent_ipam_gc_runs_total", "result", "ok") >= sweeps+3
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
	if got := counter(t, h.reg, "berth_agent_ipam_gc_claims_total", "result", "released"); got != 2 {
		t.Errorf("berth_agent_ipam_gc_claims_total{result=released} = %v, want 2", got)
	}
}

// fakeRuntime is a stand-in for the runtime's CRI: it lists the
// sandboxes the test gives it (none at first, as a runtime that lost its
// state would).
type fakeRuntime struct {
	mu    sync.Mutex
	boxes []crisandbox.Sandbox
}

func (f *fakeRuntime) List(context.Context) ([]crisandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.boxes), nil
}

func (f *fakeRuntime) set(boxes ...crisandbox.Sandbox) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.boxes = boxes
}

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
	cfg.Sandboxes, cfg.SweepInterval = &fakeRuntime{}, 100*time.Millisecond
	h = ageAttachments(t, h, cfg)
	poll.Until(t, 10*time.Second, "two refused sweeps", func() bool {
		return counter(t, h.reg, "berth_agent_ipam_gc_runs_total", "result", "refused") >= 2
	})
	for _, c := range h.store.Claims() {
		if c.Spec.State != v1alpha1.ClaimBound {
			t.Errorf("claim %s is %s after refused sweeps, want Bound", c.Name, c.Spec.State)
		}
	}
}

// TestServer_sweep_reboot_fakeRuntime: a node reboots. /run is empty (no
// attachment record, no queued DEL) and the runtime lists no sandbox. The
// pods that kubelet starts again keep their addresses (their objects
// still report them: the sweep keeps those claims, and each new sandbox's
// ADD takes its pod's claim over); a pod deleted meanwhile loses its
// claim to the sweep. Afterwards every address is unique and no claim is
// bound to a container the runtime does not have.
func TestServer_sweep_reboot_fakeRuntime(t *testing.T) {
	rt := &fakeRuntime{}
	var cfg ipamserver.Config
	h := serve(t, func(c *ipamserver.Config) { cfg = *c })
	pods := []string{"db-0", "db-1", "db-2", "db-3", "db-4", "db-5"}
	addrs := map[string]string{}
	add := func(pod, container string) {
		t.Helper()
		p := h.pod(pod, nil)
		req := protocol.Request{ContainerID: container, IfName: "eth0", Netns: "/var/run/netns/" + container, PodNamespace: "ns", PodName: pod,
			PodUID: string(p.UID), Network: "berth"}
		r := h.call(protocol.CommandAdd, req)
		if r.Error != nil || len(r.IPs) != 1 {
			t.Fatalf("ADD %s (%s): %+v", pod, container, r)
		}
		ip := strings.Split(r.IPs[0].Address, "/")[0]
		if was, ok := addrs[pod]; ok && was != ip {
			t.Errorf("%s had %s before the reboot, %s after", pod, was, ip)
		}
		addrs[pod] = ip
		p.Status.Phase, p.Status.PodIPs = corev1.PodRunning, []corev1.PodIP{{IP: ip}} // kubelet reports it
		h.store.SetPod(p)
	}
	var before []crisandbox.Sandbox
	for _, pod := range pods {
		add(pod, "old-"+pod)
		before = append(before, crisandbox.Sandbox{ID: "old-" + pod, PodUID: types.UID("uid-" + pod), Ready: true})
	}
	rt.set(before...)

	// The reboot: /run is gone, the runtime has nothing; db-5 is deleted
	// while the node is down.
	h.stop()
	for _, dir := range []string{cfg.AttachmentDir, cfg.QueueDir} {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	}
	rt.set()
	h.store.RemovePod("ns", "db-5")
	cfg.Sandboxes, cfg.SweepInterval, cfg.Registerer = rt, 50*time.Millisecond, prometheus.NewRegistry()
	h2 := start(t, cfg)
	h2.store = h.store
	h = h2
	// The ADDs are older than GC's grace: their records are gone with /run.
	poll.Until(t, 10*time.Second, "the sweep to release deleted db-5's claim", func() bool {
		for _, c := range h.store.Claims() {
			if c.Spec.Pod.Name == "db-5" {
				return c.Spec.State == v1alpha1.ClaimReserved
			}
		}
		return false
	})
	if got := counter(t, h.reg, "berth_agent_ipam_gc_claims_total", "result", "kept_live"); got < 5 {
		t.Errorf("berth_agent_ipam_gc_claims_total{result=kept_live} = %v, want the 5 pods whose objects report their addresses", got)
	}

	// kubelet starts the pods again: new sandboxes, new ADDs.
	var after []crisandbox.Sandbox
	for _, pod := range pods[:5] {
		add(pod, "new-"+pod)
		after = append(after, crisandbox.Sandbox{ID: "new-" + pod, PodUID: types.UID("uid-" + pod), Ready: true})
	}
	rt.set(after...)
	sweeps := counter(t, h.reg, "berth_agent_ipam_gc_runs_total", "result", "ok")
	poll.Until(t, 10*time.Second, "two more sweeps", func() bool {
		return counter(t, h.reg, "berth_agent_ipam_gc_runs_total", "result", "ok") >= sweeps+2
	})
	seen := map[string]string{}
	for _, c := range h.store.Claims() {
		if c.Spec.State != v1alpha1.ClaimBound {
			continue
		}
		if !slices.ContainsFunc(after, func(b crisandbox.Sandbox) bool { return b.ID == c.Spec.ContainerID }) {
			t.Errorf("claim %s (%s) is bound to container %q, which the runtime does not have", c.Name, c.Spec.Address, c.Spec.ContainerID)
		}
		if other, dup := seen[c.Spec.Address]; dup {
			t.Errorf("%s is bound to %s and %s", c.Spec.Address, other, c.Spec.Pod.Name)
		}
		seen[c.Spec.Address] = c.Spec.Pod.Name
	}
	if len(seen) != 5 {
		t.Errorf("%d addresses bound after the reboot (%v), want the 5 running pods'", len(seen), seen)
	}
}

// TestServer_sweep_prunesAttachments_fakeRuntime: the attachment record
// of a container the runtime no longer has goes with the sweep once GC's
// grace is past, also when no claim names the container any more (the
// pod's next sandbox took its claim over, and no DEL came); the record of
// the running sandbox stays.
func TestServer_sweep_prunesAttachments_fakeRuntime(t *testing.T) {
	rt := &fakeRuntime{}
	var cfg ipamserver.Config
	h := serve(t, func(c *ipamserver.Config) { cfg = *c })
	p := h.pod("db-0", nil)
	for _, container := range []string{"first", "second"} {
		req := protocol.Request{ContainerID: container, IfName: "eth0", Netns: "/var/run/netns/" + container, PodNamespace: "ns", PodName: "db-0",
			PodUID: string(p.UID), Network: "berth"}
		if r := h.call(protocol.CommandAdd, req); r.Error != nil {
			t.Fatalf("ADD %s: %+v", container, r.Error)
		}
	}
	rt.set(crisandbox.Sandbox{ID: "second", PodUID: p.UID, Ready: true})
	cfg.Sandboxes, cfg.SweepInterval = rt, 50*time.Millisecond
	h = ageAttachments(t, h, cfg)
	record := func(container string) bool {
		_, err := os.Stat(filepath.Join(cfg.AttachmentDir, protocol.FileName(container, "eth0")))
		return err == nil
	}
	poll.Until(t, 10*time.Second, "the sweep to remove the record of the sandbox the runtime no longer has", func() bool { return !record("first") })
	if !record("second") {
		t.Error("the sweep removed the record of the sandbox the runtime has")
	}
	for _, c := range h.store.Claims() {
		if c.Spec.State != v1alpha1.ClaimBound || c.Spec.ContainerID != "second" {
			t.Errorf("claim %s is %s for container %q, want Bound for the running sandbox", c.Name, c.Spec.State, c.Spec.ContainerID)
		}
	}
}

// TestServer_GC_removesAttachment: a claim CNI GC releases takes its
// container's attachment record with it, as a DEL's release does (no
// sweep runs here).
func TestServer_GC_removesAttachment(t *testing.T) {
	var cfg ipamserver.Config
	h := serve(t, func(c *ipamserver.Config) { cfg = *c })
	p := h.pod("db-0", nil)
	req := protocol.Request{ContainerID: "lost", IfName: "eth0", Netns: "/var/run/netns/lost", PodNamespace: "ns", PodName: "db-0",
		PodUID: string(p.UID), Network: "berth"}
	if r := h.call(protocol.CommandAdd, req); r.Error != nil {
		t.Fatalf("ADD: %+v", r.Error)
	}
	h.store.RemovePod("ns", "db-0")
	h = ageAttachments(t, h, cfg)
	if r := h.call(protocol.CommandGC, protocol.Request{Network: "berth"}); r.Error != nil {
		t.Fatalf("GC: %+v", r.Error)
	}
	for _, c := range h.store.Claims() {
		if c.Spec.State != v1alpha1.ClaimReserved {
			t.Errorf("claim %s is %s after GC, want Reserved", c.Name, c.Spec.State)
		}
	}
	if _, err := os.Stat(filepath.Join(cfg.AttachmentDir, protocol.FileName("lost", "eth0"))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the attachment record of the container GC released is still there (stat: %v)", err)
	}
}
