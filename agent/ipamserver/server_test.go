package ipamserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/internal/ipalloc"
	"github.com/berth-io/berth/internal/ipalloc/ipalloctest"
	"github.com/berth-io/berth/test/lockedbuf"
	"github.com/berth-io/berth/test/poll"
	"github.com/berth-io/berth/test/promtest"
	"github.com/berth-io/berth/test/runnable"
)

type harness struct {
	t     *testing.T
	store *ipalloctest.Store
	reg   *prometheus.Registry
	http  *http.Client
	// stop stops the server (it stops when the test ends otherwise).
	stop func()
}

// serve runs a Server on a real unix socket over an in-memory store; mod
// changes its configuration first.
func serve(t *testing.T, mod ...func(*ipamserver.Config)) *harness {
	t.Helper()
	st := ipalloctest.New()
	st.AddPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Gateway: "10.0.0.1",
		Routes: []v1alpha1.Route{{Destination: "0.0.0.0/0"}}}})
	sock := filepath.Join(t.TempDir(), "ipam.sock")
	reg := prometheus.NewRegistry()
	cfg := ipamserver.Config{SocketPath: sock, Node: "n1", Store: st.View(false), Registerer: reg,
		QueueDir: filepath.Join(filepath.Dir(sock), "queue"), AttachmentDir: filepath.Join(filepath.Dir(sock), "attachments"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, m := range mod {
		m(&cfg)
	}
	h := start(t, cfg)
	h.store = st
	return h
}

// start runs a Server with cfg (its Registerer a *prometheus.Registry)
// until the test ends, and returns a harness calling it on its socket.
func start(t *testing.T, cfg ipamserver.Config) *harness {
	t.Helper()
	srv, err := ipamserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := runnable.Start(t, time.Minute, srv.Start)
	ps, err := srv.Parts()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		stopPart := runnable.Start(t, time.Minute, p.Start)
		prev := stop
		stop = func() { stopPart(); prev() }
	}
	// A connection per call, as berth-ipam makes. (A keep-alive pool may
	// dial a spare connection that never sends a request, and the server's
	// Shutdown waits 5s for such a one.)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", cfg.SocketPath)
	}}}
	poll.Until(t, 5*time.Second, "the server to be ready", func() bool { return srv.Check(nil) == nil })
	return &harness{t: t, reg: cfg.Registerer.(*prometheus.Registry), http: hc, stop: stop}
}

func (h *harness) call(cmd string, req protocol.Request) protocol.Response {
	h.t.Helper()
	b, _ := json.Marshal(req)
	resp, err := h.http.Post("http://berth/v1/"+cmd, "application/json", bytes.NewReader(b))
	if err != nil {
		h.t.Fatalf("%s: %v", cmd, err)
	}
	defer resp.Body.Close()
	var out protocol.Response
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		h.t.Fatalf("%s: decode: %v", cmd, err)
	}
	return out
}

func (h *harness) pod(name string, ann map[string]string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name),
		Annotations: ann, OwnerReferences: []metav1.OwnerReference{{Kind: "StatefulSet", Name: "db", Controller: ptr.To(true)}}}}
	h.store.SetPod(p)
	return p
}

func TestServer_commands(t *testing.T) {
	h := serve(t)
	p := h.pod("db-0", nil)
	add := protocol.Request{ContainerID: "c1", IfName: "eth0", PodNamespace: "ns", PodName: "db-0", PodUID: string(p.UID)}

	r := h.call(protocol.CommandAdd, add)
	if r.Error != nil || len(r.IPs) != 1 || !strings.HasPrefix(r.IPs[0].Address, "10.0.0.") || !strings.HasSuffix(r.IPs[0].Address, "/24") ||
		r.IPs[0].Gateway != "10.0.0.1" || len(r.Routes) != 1 || r.Routes[0].Dst != "0.0.0.0/0" || r.Routes[0].GW != "10.0.0.1" {
		t.Fatalf("ADD: %+v", r)
	}
	addr := r.IPs[0].Address
	if again := h.call(protocol.CommandAdd, add); again.Error != nil || again.IPs[0].Address != addr {
		t.Fatalf("repeated ADD: %+v, want %s", again, addr)
	}
	if c := h.call(protocol.CommandCheck, add); c.Error != nil || c.IPs[0].Address+"/24" != addr {
		t.Fatalf("CHECK: %+v", c)
	}
	if s := h.call(protocol.CommandStatus, protocol.Request{}); s.Error != nil {
		t.Fatalf("STATUS: %+v", s.Error)
	}
	// GC with the attachment valid keeps it; ADDs in the last minutes are
	// kept too, even if not listed.
	if g := h.call(protocol.CommandGC, protocol.Request{}); g.Error != nil {
		t.Fatalf("GC: %+v", g.Error)
	}
	if c := h.call(protocol.CommandCheck, add); c.Error != nil {
		t.Fatalf("CHECK after GC: %+v (GC released an attachment whose ADD just ran)", c.Error)
	}
	for range 2 {
		if d := h.call(protocol.CommandDel, protocol.Request{ContainerID: "c1", IfName: "eth0"}); d.Error != nil {
			t.Fatalf("DEL: %+v", d.Error)
		}
	}
	if c := h.call(protocol.CommandCheck, add); c.Error == nil {
		t.Fatal("CHECK after DEL passed")
	}
	if got := counter(t, h.reg, "berth_agent_ipam_reservations_total", "result", "miss"); got != 1 {
		t.Errorf("reservation misses = %v, want 1", got)
	}
}

func TestServer_errors(t *testing.T) {
	h := serve(t)
	h.pod("db-0", map[string]string{v1alpha1.AnnotationPool: "nope"})
	for _, tc := range []struct {
		name string
		cmd  string
		body string
		code uint
		msg  string
	}{
		{name: "unknown pool", cmd: "add", body: `{"containerID":"c","ifName":"eth0","podNamespace":"ns","podName":"db-0"}`, code: 7,
			msg: `berth-ipam ADD failed: pod ns/db-0, pool nope: no IPPool "nope" (from the pod annotation berth.io/ippool)`},
		{name: "pod not found is retryable", cmd: "add", body: `{"containerID":"c","ifName":"eth0","podNamespace":"ns","podName":"ghost"}`, code: 11,
			msg: "berth-ipam ADD failed: pod ns/ghost: no such pod (yet)"},
		{name: "no pod arguments", cmd: "add", body: `{"containerID":"c","ifName":"eth0"}`, code: 7,
			msg: "berth-ipam needs the container ID, interface and the pod's namespace and name (CNI_ARGS K8S_POD_NAMESPACE, K8S_POD_NAME)"},
		{name: "unknown field", cmd: "add", body: `{"containerID":"c","bogus":1}`, code: 7,
			msg: `bad request: json: unknown field "bogus"`},
		{name: "DEL of nothing is fine", cmd: "del", body: `{"containerID":"never","ifName":"eth0"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := h.http.Post("http://berth/v1/"+tc.cmd, "application/json", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var r protocol.Response
			if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
				t.Fatal(err)
			}
			if tc.code == 0 {
				if r.Error != nil {
					t.Fatalf("error %+v, want none", r.Error)
				}
				return
			}
			if r.Error == nil || r.Error.Code != tc.code || r.Error.Error() != tc.msg {
				t.Fatalf("got %+v\nwant code %d %q", r.Error, tc.code, tc.msg)
			}
		})
	}
	if n := testutil.CollectAndCount(h.reg, "berth_agent_ipam_allocation_duration_seconds"); n != 2 {
		t.Errorf("allocation histogram series = %d, want 2 (error, retry)", n)
	}
}

// counter returns the value of the counter name's series with label=value
// in reg; it fails the test when there is none.
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	v, n := promtest.Value(t, reg, name, map[string]string{label: value})
	if n == 0 {
		t.Fatalf("metric %s{%s=%q} not found", name, label, value)
	}
	return v
}

// TestServer_reclaim: a pool without a free address hands over another
// app's reservation; the server logs it and counts it by pool.
func TestServer_reclaim(t *testing.T) {
	logs := &lockedbuf.Buffer{}
	h := serve(t, func(c *ipamserver.Config) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	h.store.AddPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "tiny"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.9.0.0/30"}})
	for _, c := range []struct {
		addr  string
		state v1alpha1.ClaimState
		app   string
	}{{"10.9.0.1", v1alpha1.ClaimBound, "a"}, {"10.9.0.2", v1alpha1.ClaimReserved, "b"}} {
		cl := &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.ClaimName("tiny", netip.MustParseAddr(c.addr))},
			Spec: v1alpha1.IPClaimSpec{Pool: "tiny", Address: c.addr, State: c.state, Node: "n2",
				App: &v1alpha1.App{Kind: v1alpha1.AppDeployment, Namespace: "ns", Name: c.app},
				Pod: v1alpha1.PodRef{Namespace: "ns", Name: c.app + "-1", UID: types.UID("uid-" + c.app)}}}
		if c.state == v1alpha1.ClaimReserved {
			cl.Spec.ReservedUntil = &metav1.Time{Time: time.Now().Add(time.Hour)}
		} else {
			cl.Spec.ContainerID = "c-" + c.app
		}
		h.store.PutClaim(cl)
	}
	p := h.pod("db-0", map[string]string{v1alpha1.AnnotationPool: "tiny"})
	r := h.call(protocol.CommandAdd, protocol.Request{ContainerID: "c1", IfName: "eth0", PodNamespace: "ns", PodName: "db-0", PodUID: string(p.UID)})
	if r.Error != nil || len(r.IPs) != 1 || r.IPs[0].Address != "10.9.0.2/30" {
		t.Fatalf("ADD: %+v, %+v; want 10.9.0.2/30", r, r.Error)
	}
	if got := counter(t, h.reg, "berth_agent_ipam_reservations_reclaimed_total", "pool", "tiny"); got != 1 {
		t.Errorf("reservations reclaimed in pool tiny = %v, want 1", got)
	}
	for _, want := range []string{`msg="ADD reclaimed the reservation of another app (no free address left in the pool)"`,
		"address=10.9.0.2/30", "pool=tiny", "previous_app=Deployment/ns/b", "pod=ns/db-0"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
}

// TestServer_GC_afterRestart: CNI GC keeps off a container whose ADD
// ended less than the grace period ago even when the agent restarted in
// between (its attachment record says when), and still collects one whose
// record is older.
func TestServer_GC_afterRestart(t *testing.T) {
	var cfg ipamserver.Config
	h := serve(t, func(c *ipamserver.Config) { cfg = *c })
	adds := map[string]protocol.Request{}
	for _, name := range []string{"db-0", "db-1"} {
		p := h.pod(name, nil)
		req := protocol.Request{ContainerID: "c-" + name, IfName: "eth0", Netns: "/var/run/netns/" + name, PodNamespace: "ns", PodName: name, PodUID: string(p.UID)}
		if r := h.call(protocol.CommandAdd, req); r.Error != nil {
			t.Fatalf("ADD %s: %+v", name, r.Error)
		}
		adds[name] = req
	}
	// db-1's ADD ended long ago.
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(cfg.AttachmentDir, protocol.FileName("c-db-1", "eth0")), old, old); err != nil {
		t.Fatal(err)
	}
	h.stop()
	cfg.Registerer = prometheus.NewRegistry()
	h = start(t, cfg)
	// The runtime listed its sandboxes before either ADD.
	if g := h.call(protocol.CommandGC, protocol.Request{}); g.Error != nil {
		t.Fatalf("GC: %+v", g.Error)
	}
	if c := h.call(protocol.CommandCheck, adds["db-0"]); c.Error != nil {
		t.Errorf("CHECK of db-0 after the restart and GC: %+v (GC released an attachment whose ADD just ran)", c.Error)
	}
	if c := h.call(protocol.CommandCheck, adds["db-1"]); c.Error == nil {
		t.Error("CHECK of db-1 passed: GC kept an attachment the runtime does not have, whose ADD ended an hour ago")
	}
}

// TestServer_GC_network: CNI GC of one network releases only the claims
// that network's ADDs bound. A runtime (or Multus) sends GC once per
// network, listing that network's attachments only
// (containernetworking/cni#1091), so a pod's second interface, on another
// network that also uses berth-ipam, is not in the list and must stay
// bound. Claims that name no network (an older berth-ipam bound them) are
// left to a GC that names none.
func TestServer_GC_network(t *testing.T) {
	var cfg ipamserver.Config
	h := serve(t, func(c *ipamserver.Config) { cfg = *c })
	h.store.AddPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "u"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.5.0.0/24"}})
	p, old := h.pod("db-0", nil), h.pod("db-1", nil)
	eth0 := protocol.Request{ContainerID: "c-db-0", IfName: "eth0", Netns: "/var/run/netns/db-0", PodNamespace: "ns", PodName: "db-0",
		PodUID: string(p.UID), Network: "berth"}
	net1 := eth0
	net1.IfName, net1.Network, net1.Pools = "net1", "underlay", []string{"u"}
	unnamed := protocol.Request{ContainerID: "c-db-1", IfName: "eth0", Netns: "/var/run/netns/db-1", PodNamespace: "ns", PodName: "db-1",
		PodUID: string(old.UID)}
	for _, req := range []protocol.Request{eth0, net1, unnamed} {
		if r := h.call(protocol.CommandAdd, req); r.Error != nil {
			t.Fatalf("ADD %s/%s: %+v", req.ContainerID, req.IfName, r.Error)
		}
	}
	networks := map[string]string{}
	for _, c := range h.store.Claims() {
		networks[c.Spec.ContainerID+"/"+c.Spec.Interface] = c.Spec.Network
	}
	if want := map[string]string{"c-db-0/eth0": "berth", "c-db-0/net1": "underlay", "c-db-1/eth0": ""}; !maps.Equal(networks, want) {
		t.Fatalf("claims' networks %v, want %v", networks, want)
	}
	// The ADDs ended long ago (GC keeps off recent ones).
	records, err := filepath.Glob(filepath.Join(cfg.AttachmentDir, "*.json"))
	if err != nil || len(records) != 3 {
		t.Fatalf("attachment records %v, %v; want 3", records, err)
	}
	for _, f := range records {
		if err := os.Chtimes(f, time.Now().Add(-time.Hour), time.Now().Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	h.stop()
	cfg.Registerer = prometheus.NewRegistry()
	h = start(t, cfg)

	bound := func(req protocol.Request) bool { return h.call(protocol.CommandCheck, req).Error == nil }
	for _, step := range []struct {
		gc                  protocol.Request
		eth0, net1, unnamed bool // still bound after it
	}{
		{protocol.Request{Network: "berth", ValidAttachments: []protocol.Attachment{{ContainerID: "c-db-0", IfName: "eth0"}}}, true, true, true},
		{protocol.Request{Network: "underlay"}, true, false, true},
		{protocol.Request{}, true, false, false},
	} {
		if g := h.call(protocol.CommandGC, step.gc); g.Error != nil {
			t.Fatalf("GC of network %q: %+v", step.gc.Network, g.Error)
		}
		if got := [3]bool{bound(eth0), bound(net1), bound(unnamed)}; got != [3]bool{step.eth0, step.net1, step.unnamed} {
			t.Fatalf("after GC of network %q with %v valid: bound eth0 (berth), net1 (underlay), db-1's (no network) = %v, want %v",
				step.gc.Network, step.gc.ValidAttachments, got, [3]bool{step.eth0, step.net1, step.unnamed})
		}
	}
}

// flakyStore is a store whose API server is unreachable while down is set:
// listing a container's claims (the first read of a DEL) fails.
type flakyStore struct {
	ipalloc.Store
	down  atomic.Bool
	fails atomic.Int32
}

var errUnreachable = errors.New("dial tcp 10.96.0.1:443: connect: connection refused")

func (f *flakyStore) ClaimsOfContainer(id string) ([]*v1alpha1.IPClaim, error) {
	if f.down.Load() {
		f.fails.Add(1)
		return nil, errUnreachable
	}
	return f.Store.ClaimsOfContainer(id)
}

// TestServer_Start_queuedDELRetried: a DEL queued while the agent was down
// fails while the API server is unreachable; Start keeps retrying (not
// ready, saying why, the socket not served, not returning), then runs it
// and serves.
func TestServer_Start_queuedDELRetried(t *testing.T) {
	st := ipalloctest.New()
	st.AddPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"}})
	st.PutClaim(&v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: "p-10-0-0-7"}, Spec: v1alpha1.IPClaimSpec{Pool: "p", Address: "10.0.0.7",
		State: v1alpha1.ClaimBound, ContainerID: "c-queued", Interface: "eth0", Node: "n1", Pod: v1alpha1.PodRef{Namespace: "ns", Name: "gone", UID: "uid-gone"}}})
	dir := t.TempDir()
	sock, queue := filepath.Join(dir, "ipam.sock"), filepath.Join(dir, "queue")
	if err := os.MkdirAll(queue, 0o700); err != nil {
		t.Fatal(err)
	}
	queued := filepath.Join(queue, "c-queued-eth0.json")
	if err := os.WriteFile(queued, []byte(`{"containerID":"c-queued","ifName":"eth0"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := &flakyStore{Store: st.View(false)}
	fs.down.Store(true)
	srv, err := ipamserver.New(ipamserver.Config{SocketPath: sock, Node: "n1", Store: fs, QueueDir: queue, AttachmentDir: filepath.Join(dir, "attachments"),
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start() = %v after the context ended, want nil", err)
		}
	}()

	poll.Until(t, 10*time.Second, "three failed attempts", func() bool { return fs.fails.Load() >= 3 })
	want := "ipam socket not served yet: ipam server: queued DEL of container c-queued: container c-queued: claims: " + errUnreachable.Error()
	if err := srv.Check(nil); err == nil || err.Error() != want {
		t.Fatalf("Check() while failing = %v\nwant %s", err, want)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket while the queued DEL fails: %v, want none", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Start() returned %v while the API server was unreachable", err)
	default:
	}

	fs.down.Store(false)
	poll.Until(t, 10*time.Second, "ready", func() bool { return srv.Check(nil) == nil })
	if _, err := os.Stat(queued); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("queued DEL still there: %v", err)
	}
	if n := len(st.Claims()); n != 0 {
		t.Errorf("%d claims after the queued DEL, want 0", n)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Post("http://berth/v1/"+protocol.CommandStatus, "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatalf("STATUS over the socket: %v", err)
	}
	defer resp.Body.Close()
	var r protocol.Response
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Error != nil {
		t.Fatalf("STATUS: %+v, %v", r.Error, err)
	}
}

// TestServer_Start_endsWhileSyncing: Start returns nil when its context
// ends before the cache synced.
func TestServer_Start_endsWhileSyncing(t *testing.T) {
	dir := t.TempDir()
	srv, err := ipamserver.New(ipamserver.Config{SocketPath: filepath.Join(dir, "ipam.sock"), Node: "n1", Store: ipalloctest.New().View(false),
		QueueDir: filepath.Join(dir, "queue"), MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		WaitForSync: func(ctx context.Context) bool { <-ctx.Done(); return false },
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatalf("Start() = %v, want nil", err)
	}
	if err := srv.Check(nil); err == nil || err.Error() != "ipam socket not served yet" {
		t.Fatalf("Check() = %v, want not served yet", err)
	}
}
