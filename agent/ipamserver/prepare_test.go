package ipamserver_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/internal/ipalloc"
	"github.com/berth-io/berth/test/lockedbuf"
	"github.com/berth-io/berth/test/poll"
)

// gatedStore holds every claim update until the gate is closed (at once
// while open is set); while down is set they fail with errUnreachable
// instead.
type gatedStore struct {
	ipalloc.Store
	gate    chan struct{}
	open    atomic.Bool
	down    atomic.Bool
	waiting atomic.Int32 // writes held now
	tries   atomic.Int32 // writes held or failed so far
}

func (g *gatedStore) pass(ctx context.Context) error {
	if g.open.Load() && !g.down.Load() {
		return nil
	}
	g.tries.Add(1)
	if g.down.Load() {
		return errUnreachable
	}
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	select {
	case <-g.gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *gatedStore) Update(ctx context.Context, c *v1alpha1.IPClaim) error {
	if err := g.pass(ctx); err != nil {
		return err
	}
	return g.Store.Update(ctx, c)
}

// podClaims lists the pod's claims as the API server has them.
func podClaims(t *testing.T, c client.Client, uid types.UID) []v1alpha1.IPClaim {
	t.Helper()
	var l v1alpha1.IPClaimList
	if err := c.List(context.Background(), &l, client.MatchingLabels{v1alpha1.LabelPodUID: string(uid)}); err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// prepareSetup starts an API server with namespace "ns" and the pools
// (name: CIDR), and returns its client and the configuration of a server
// of node n1 that prepares pods, over a store whose claim updates wait
// for gated.gate; its files are in a new directory.
func prepareSetup(t *testing.T, ctx context.Context, pools map[string]string) (client.Client, *gatedStore, ipamserver.Config) {
	t.Helper()
	cfg, c := startAPI(t)
	mustCreate(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}})
	for name, cidr := range pools {
		mustCreate(t, c, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.IPPoolSpec{CIDR: cidr}})
	}
	st, ca := newNodeCache(t, ctx, cfg, c)
	gated := &gatedStore{Store: st, gate: make(chan struct{})}
	dir := t.TempDir()
	return c, gated, ipamserver.Config{SocketPath: filepath.Join(dir, "ipam.sock"), QueueDir: filepath.Join(dir, "queue"),
		AttachmentDir: filepath.Join(dir, "attachments"), Node: "n1", Store: gated, PodCache: ca, Prepare: true,
		Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// TestServer_prepare, against a real API server: once an ADD on eth0 has
// shown the CNI configuration's pools, a pod scheduled to the node gets its
// claim before any ADD; its ADD answers with that address while claim
// updates are held (no API write before the answer); its DEL, before the
// container is recorded, releases the claim. A prepared claim
// the ADD did not use (it asked for another pool) is released, as are
// those of a pod that failed without an ADD and of a pod that got its
// network elsewhere, and a restarted agent records the container an
// earlier run answered for.
func TestServer_prepare(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, gated, srvCfg := prepareSetup(t, ctx, map[string]string{"p": "10.20.0.0/24", "q": "10.21.0.0/24"})
	h := start(t, srvCfg)
	newPod := func(name string, ann map[string]string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Annotations: ann},
			Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		mustCreate(t, c, p)
		return p
	}
	add := func(p *corev1.Pod, id string, pools ...string) protocol.Response {
		return h.call(protocol.CommandAdd, protocol.Request{ContainerID: id, IfName: "eth0", Netns: "/var/run/netns/" + id,
			PodNamespace: p.Namespace, PodName: p.Name, PodUID: string(p.UID), Pools: pools})
	}
	prepared := func(result string) float64 {
		return counter(t, h.reg, "berth_agent_ipam_prepared_total", "result", result)
	}

	// Before any ADD the pools are unknown: nothing is prepared. The first
	// ADD allocates (its claim create is not held by the gate).
	first := newPod("first", nil)
	if r := add(first, "c-first", "p"); r.Error != nil {
		t.Fatalf("ADD first: %+v", r.Error)
	}
	if n := prepared("ok"); n != 0 {
		t.Fatalf("prepared %v pods before an ADD showed the pools", n)
	}
	// They are kept for the next start.
	if data, err := os.ReadFile(filepath.Join(srvCfg.AttachmentDir, "pools.learned")); err != nil || string(data) != `["p"]` {
		t.Fatalf("pools kept for the next start: %q, %v; want [\"p\"]", data, err)
	}

	// The next pod's claim exists before its ADD.
	second := newPod("second", nil)
	poll.Until(t, 30*time.Second, "the second pod's claim to be prepared", func() bool { return len(podClaims(t, c, second.UID)) == 1 })
	claim := podClaims(t, c, second.UID)[0]
	if claim.Spec.ContainerID != "" || claim.Spec.State != v1alpha1.ClaimBound || claim.Spec.Node != "n1" || claim.Spec.Pool != "p" {
		t.Fatalf("prepared claim: %+v", claim.Spec)
	}
	r := add(second, "c-second", "p")
	if r.Error != nil || len(r.IPs) != 1 || !strings.HasPrefix(r.IPs[0].Address, claim.Spec.Address+"/") {
		t.Fatalf("ADD second (claim updates held): %+v, want the prepared %s", r, claim.Spec.Address)
	}
	if n := prepared("used"); n != 1 {
		t.Errorf("prepared used = %v, want 1", n)
	}
	var rec map[string]any
	data, err := os.ReadFile(filepath.Join(srvCfg.AttachmentDir, "c-second-eth0.json"))
	if err != nil || json.Unmarshal(data, &rec) != nil || rec["podUID"] != string(second.UID) {
		t.Fatalf("attachment record: %s, %v; want the pod UID and claims", data, err)
	}
	// A DEL that comes before the container is recorded (its update still
	// held) releases the prepared claim itself, without waiting; the late
	// update then finds the claim gone and stops.
	if d := h.call(protocol.CommandDel, protocol.Request{ContainerID: "c-second", IfName: "eth0"}); d.Error != nil {
		t.Fatalf("DEL second: %+v", d.Error)
	}
	if left := podClaims(t, c, second.UID); len(left) != 0 {
		t.Fatalf("after DEL: %+v left, want no claim of the pod", left)
	}
	close(gated.gate)
	// A prepared claim of a pool the ADD does not ask for is released.
	third := newPod("third", nil)
	poll.Until(t, 30*time.Second, "the third pod's claim to be prepared", func() bool { return len(podClaims(t, c, third.UID)) == 1 })
	if r := add(third, "c-third", "q"); r.Error != nil || !strings.HasPrefix(r.IPs[0].Address, "10.21.") {
		t.Fatalf("ADD third from pool q: %+v", r)
	}
	poll.Until(t, 30*time.Second, "the unused prepared claim to be released", func() bool {
		cl := podClaims(t, c, third.UID)
		return len(cl) == 1 && cl[0].Spec.Pool == "q" && cl[0].Spec.ContainerID == "c-third"
	})
	// Counted just after the claim is gone from the API server.
	poll.Until(t, 10*time.Second, "berth_agent_ipam_prepared_total{result=released} to be 1", func() bool { return prepared("released") == 1 })

	// A pod that ends without an ADD (kubelet refused it) gives its
	// prepared claim back.
	refused := newPod("refused", nil)
	poll.Until(t, 30*time.Second, "the refused pod's claim to be prepared", func() bool { return len(podClaims(t, c, refused.UID)) == 1 })
	refused.Status.Phase, refused.Status.Reason = corev1.PodFailed, "OutOfcpu"
	if err := c.Status().Update(ctx, refused); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "the failed pod's prepared claim to be released", func() bool { return len(podClaims(t, c, refused.UID)) == 0 })
	// Counted just after the claim is gone from the API server.
	poll.Until(t, 10*time.Second, "berth_agent_ipam_prepared_total{result=released} to be 2", func() bool { return prepared("released") == 2 })

	// A pod that got its network elsewhere (kubelet reports IPs that are not
	// the prepared address) gives its untaken claim back; one whose IP is
	// the prepared address keeps it. The informer hands the two status
	// updates to the agent in order, so once the first is released the
	// second has been judged.
	same, elsewhere := newPod("same", nil), newPod("elsewhere", nil)
	poll.Until(t, 30*time.Second, "the claims of pods same and elsewhere to be prepared", func() bool {
		return len(podClaims(t, c, same.UID)) == 1 && len(podClaims(t, c, elsewhere.UID)) == 1
	})
	sameAddr := podClaims(t, c, same.UID)[0].Spec.Address
	for p, ip := range map[*corev1.Pod]string{same: sameAddr, elsewhere: "192.0.2.7"} {
		p.Status.Phase, p.Status.PodIP, p.Status.PodIPs = corev1.PodRunning, ip, []corev1.PodIP{{IP: ip}}
	}
	for _, p := range []*corev1.Pod{same, elsewhere} {
		if err := c.Status().Update(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 30*time.Second, "the claim of the pod started elsewhere to be released", func() bool { return len(podClaims(t, c, elsewhere.UID)) == 0 })
	poll.Until(t, 10*time.Second, "berth_agent_ipam_prepared_total{result=released} to be 3", func() bool { return prepared("released") == 3 })
	if cl := podClaims(t, c, same.UID); len(cl) != 1 || cl[0].Spec.Address != sameAddr {
		t.Fatalf("pod same (its IP is the prepared %s): claims %+v, want it kept", sameAddr, cl)
	}

	// A restarted agent records the container an earlier run answered ADD
	// for from the attachment record.
	fourth := newPod("fourth", nil)
	poll.Until(t, 30*time.Second, "the fourth pod's claim to be prepared (pools now q)", func() bool { return len(podClaims(t, c, fourth.UID)) == 1 })
	name := podClaims(t, c, fourth.UID)[0].Name
	rec = map[string]any{"containerID": "c-fourth", "ifName": "eth0", "netns": "/var/run/netns/x", "podUID": string(fourth.UID), "claims": []string{name}}
	data, _ = json.Marshal(rec)
	if err := os.WriteFile(filepath.Join(srvCfg.AttachmentDir, "c-fourth-eth0.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	again := srvCfg
	again.SocketPath, again.Registerer = filepath.Join(filepath.Dir(srvCfg.SocketPath), "again.sock"), prometheus.NewRegistry()
	start(t, again)
	if cl := podClaims(t, c, fourth.UID); len(cl) != 1 || cl[0].Spec.ContainerID != "c-fourth" {
		t.Fatalf("after a restart: %+v, want the claim to record c-fourth", cl)
	}
}

// TestServer_prepareFromCNIConfDir: with CNIConfDir, a node prepares pods
// before any ADD, from the pools of the default network's berth-ipam
// section; a configuration whose default network is not berth-ipam's at
// start is read again when a pod is scheduled (the runtime's installer may
// write it after the agent started). A dual-stack pod's two claims record
// its container with two writes at once.
func TestServer_prepareFromCNIConfDir(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, gated, srvCfg := prepareSetup(t, ctx, map[string]string{"p": "10.20.0.0/24", "q": "10.21.0.0/24", "q6": "fd00:21::/120"})
	confDir := t.TempDir()
	srvCfg.CNIConfDir = confDir
	var logs lockedbuf.Buffer
	srvCfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	write := func(name, conf string) {
		if err := os.WriteFile(filepath.Join(confDir, name), []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("05-other.conflist", `{"cniVersion": "1.1.0", "name": "other", "plugins": [{"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}]}`)
	write("10-berth.conflist", `{"cniVersion": "1.1.0", "name": "berth", "plugins": [{"type": "bridge",
  "ipam": {"type": "berth-ipam", "pools": ["q", "q6"], "socket": "`+srvCfg.SocketPath+`"}}]}`)
	h := start(t, srvCfg) // the default network (05-other) is not berth-ipam's: nothing learned
	if err := os.Remove(filepath.Join(confDir, "05-other.conflist")); err != nil {
		t.Fatal(err)
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a"},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	mustCreate(t, c, p)
	poll.Until(t, 30*time.Second, "the pod's two claims to be prepared with no ADD yet", func() bool { return len(podClaims(t, c, p.UID)) == 2 })
	for _, cl := range podClaims(t, c, p.UID) {
		if (cl.Spec.Pool != "q" && cl.Spec.Pool != "q6") || cl.Spec.ContainerID != "" {
			t.Fatalf("prepared claim %+v, want one of pools q and q6 (the configuration's) with no container", cl.Spec)
		}
	}
	if data, err := os.ReadFile(filepath.Join(srvCfg.AttachmentDir, "pools.learned")); err != nil || string(data) != `["q","q6"]` {
		t.Fatalf("pools kept for the next start: %q, %v; want [\"q\",\"q6\"]", data, err)
	}

	r := h.call(protocol.CommandAdd, protocol.Request{ContainerID: "c-a", IfName: "eth0", Netns: "/var/run/netns/c-a",
		PodNamespace: p.Namespace, PodName: p.Name, PodUID: string(p.UID), Pools: []string{"q", "q6"}})
	if r.Error != nil || len(r.IPs) != 2 {
		t.Fatalf("ADD (claim updates held): %+v, want the two prepared addresses", r)
	}
	// Its log says the addresses were prepared, not whether they were
	// reused: that was decided (and logged) at preparation.
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "msg=ADD ") && (!strings.Contains(line, "repeated=true prepared=true") || strings.Contains(line, "reused=")) {
			t.Errorf("ADD log line %q, want repeated=true prepared=true and no reused", line)
		}
	}
	if !strings.Contains(logs.String(), "msg=ADD ") {
		t.Errorf("no ADD log line in:\n%s", logs.String())
	}
	poll.Until(t, 10*time.Second, "both container records to wait at the gate at once", func() bool { return gated.waiting.Load() == 2 })
	close(gated.gate)
	poll.Until(t, 30*time.Second, "both claims to record the container", func() bool {
		cl := podClaims(t, c, p.UID)
		return len(cl) == 2 && cl[0].Spec.ContainerID == "c-a" && cl[1].Spec.ContainerID == "c-a"
	})
}
