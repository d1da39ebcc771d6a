package ipamserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/internal/cachetrim"
	"github.com/berth-io/berth/internal/ipalloc"
	"github.com/berth-io/berth/test/lockedbuf"
	"github.com/berth-io/berth/test/poll"
	"github.com/berth-io/berth/test/promtest"
	"github.com/berth-io/berth/test/runnable"
)

// agentOnManager is one run of the IPAM server as berth-agent wires it:
// NewForManager on a controller-runtime manager (its cache, client and
// events.k8s.io recorder), serving a unix socket.
type agentOnManager struct {
	srv  *ipamserver.Server
	reg  *prometheus.Registry
	http *http.Client
	stop func()
}

func startOnManager(t *testing.T, cfg *rest.Config, base ipamserver.Config) *agentOnManager {
	t.Helper()
	mgr, err := manager.New(cfg, manager.Options{Scheme: scheme(t), Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: cachetrim.Options(cache.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	base.Node, base.Registerer, base.Recorder = "n1", reg, mgr.GetEventRecorder("berth-agent")
	base.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := ipamserver.NewForManager(context.Background(), mgr, base)
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Add(srv); err != nil {
		t.Fatal(err)
	}
	stop := runnable.Start(t, time.Minute, mgr.Start)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", base.SocketPath)
	}}}
	return &agentOnManager{srv: srv, reg: reg, http: hc, stop: stop}
}

func (a *agentOnManager) call(t *testing.T, cmd string, req protocol.Request) protocol.Response {
	t.Helper()
	b, _ := json.Marshal(req)
	resp, err := a.http.Post("http://berth/v1/"+cmd, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	defer resp.Body.Close()
	var out protocol.Response
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s: decode: %v", cmd, err)
	}
	return out
}

// denyReleaseOfBadPods installs a ValidatingAdmissionPolicy (standing in
// for an admission webhook) that denies, for good, any update or delete
// of an IPClaim whose pod's name starts with "bad", and waits until the
// API server enforces it.
func denyReleaseOfBadPods(t *testing.T, ctx context.Context, c client.Client, probe *v1alpha1.IPClaim) {
	t.Helper()
	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny-release-of-bad-pods"},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionregistrationv1.Fail),
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Update, admissionregistrationv1.Delete},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{"berth.io"}, APIVersions: []string{"*"}, Resources: []string{"ipclaims"}},
				},
			}}},
			Validations: []admissionregistrationv1.Validation{{
				Expression: "!oldObject.spec.pod.name.startsWith('bad')",
				Message:    "a test policy denies the release of the claims of pods named bad*",
			}},
		}}
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: policy.Name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: policy.Name,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}}}
	mustCreate(t, c, policy)
	mustCreate(t, c, binding)
	poll.Until(t, 30*time.Second, "the policy to be enforced", func() bool {
		err := c.Delete(ctx, probe.DeepCopy(), client.DryRunAll)
		return apierrors.IsForbidden(err) || apierrors.IsInvalid(err)
	})
}

// quarantined returns the records in the quarantine directory of queue.
func quarantined(t *testing.T, queue string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(queue, ipamserver.QuarantineDir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		files[i] = filepath.Base(f)
	}
	return files
}

// quarantineEvent returns the notes of the IPReleaseQuarantined Events on
// the object regarding (a pod, or the Node "n1" in default), if any.
func quarantineEvent(t *testing.T, ctx context.Context, c client.Client, namespace, regarding string) string {
	t.Helper()
	var evs eventsv1.EventList
	if err := c.List(ctx, &evs, client.InNamespace(namespace)); err != nil {
		t.Fatal(err)
	}
	var notes []string
	for _, e := range evs.Items {
		if e.Regarding.Name == regarding && e.Reason == ipamserver.ReasonReleaseQuarantined && e.Type == corev1.EventTypeWarning {
			notes = append(notes, e.Note)
		}
	}
	return strings.Join(notes, "\n")
}

// TestServer_Start_quarantinesRejectedDEL: the API server denies, for
// good, the release of the claims of two DELs queued while the agent was
// down (an admission policy refuses it), while a third queued DEL is
// fine. The agent still serves its socket: the good DEL ran, the bad
// records are in quarantine (their claims still Bound), an Event on the
// pod (on the Node for the pod that is gone) and the gauge say so, and an
// ADD works. Then a DEL answered at once (deferred release) whose release
// is denied likewise is quarantined too.
func TestServer_Start_quarantinesRejectedDEL(t *testing.T) {
	cfg, c := startAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	base := ipamserver.Config{SocketPath: filepath.Join(dir, "ipam.sock"), QueueDir: filepath.Join(dir, "queue"),
		AttachmentDir: filepath.Join(dir, "attachments"), MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	mustCreate(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}})
	mustCreate(t, c, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"}})
	pods := map[string]*corev1.Pod{}
	for _, name := range []string{"bad", "bad-gone", "good", "bad-2", "new"} {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
			Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		mustCreate(t, c, p)
		pods[name] = p
	}
	add := func(a *agentOnManager, pod, container string) protocol.Response {
		t.Helper()
		p := pods[pod]
		r := a.call(t, protocol.CommandAdd, protocol.Request{ContainerID: container, IfName: "eth0", PodNamespace: p.Namespace, PodName: p.Name,
			PodUID: string(p.UID), Pools: []string{"p"}})
		if r.Error != nil || len(r.IPs) != 1 {
			t.Fatalf("ADD of pod %s: %+v", pod, r)
		}
		return r
	}
	claimOf := func(container string) *v1alpha1.IPClaim {
		t.Helper()
		var l v1alpha1.IPClaimList
		if err := c.List(ctx, &l); err != nil {
			t.Fatal(err)
		}
		for i := range l.Items {
			if l.Items[i].Spec.ContainerID == container {
				return &l.Items[i]
			}
		}
		return nil
	}

	// An agent gives the pods bad and good their addresses, and stops.
	first := startOnManager(t, cfg, base)
	poll.Until(t, 30*time.Second, "the first agent to be ready", func() bool { return first.srv.Check(nil) == nil })
	add(first, "bad", "c-bad")
	add(first, "bad-gone", "c-bad-gone")
	add(first, "good", "c-good")
	first.stop()
	bad, good := claimOf("c-bad"), claimOf("c-good")
	if bad == nil || good == nil {
		t.Fatalf("claims after the ADDs: bad %v, good %v", bad, good)
	}
	// While it is down, berth-ipam queues the containers' DELs; the
	// release of bad's and bad-gone's claims is denied for good, and
	// bad-gone's pod object is gone.
	if err := c.Delete(ctx, pods["bad-gone"], client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	for _, r := range []protocol.Request{
		{ContainerID: "c-bad", IfName: "eth0", PodNamespace: "ns", PodName: "bad", PodUID: string(pods["bad"].UID)},
		{ContainerID: "c-bad-gone", IfName: "eth0", PodNamespace: "ns", PodName: "bad-gone", PodUID: string(pods["bad-gone"].UID)},
		{ContainerID: "c-good", IfName: "eth0", PodNamespace: "ns", PodName: "good", PodUID: string(pods["good"].UID)},
	} {
		if err := protocol.Enqueue(base.QueueDir, &r); err != nil {
			t.Fatal(err)
		}
	}
	denyReleaseOfBadPods(t, ctx, c, bad)

	deferred := base
	deferred.DeferRelease = true
	a := startOnManager(t, cfg, deferred)
	poll.Until(t, 30*time.Second, "the agent to serve its socket despite the rejected DEL", func() bool { return a.srv.Check(nil) == nil })
	if got := claimOf("c-good"); got != nil {
		t.Errorf("good's claim after its queued DEL: %+v, want released (deleted)", got.Spec)
	}
	if got := claimOf("c-bad"); got == nil || got.Spec.State != v1alpha1.ClaimBound {
		t.Errorf("bad's claim after its DEL was quarantined: %v, want still Bound to c-bad (held, not freed)", got)
	}
	if got, want := quarantined(t, base.QueueDir), []string{"c-bad-eth0.json", "c-bad-gone-eth0.json"}; !equalStrings(got, want) {
		t.Errorf("quarantine: %v, want %v", got, want)
	}
	if left, _ := filepath.Glob(filepath.Join(base.QueueDir, "*.json")); len(left) != 0 {
		t.Errorf("queue after the start: %v, want empty", left)
	}
	if v, _ := promtest.Value(t, a.reg, "berth_agent_ipam_del_records_quarantined", nil); v != 2 {
		t.Errorf("berth_agent_ipam_del_records_quarantined = %v, want 2", v)
	}
	// The pod of c-bad-gone is gone: its Event is on the Node.
	poll.Until(t, 30*time.Second, "an Event on the Node", func() bool {
		return strings.Contains(quarantineEvent(t, ctx, c, metav1.NamespaceDefault, "n1"), "c-bad-gone")
	})
	var note string
	poll.Until(t, 30*time.Second, "an Event on pod bad", func() bool {
		note = quarantineEvent(t, ctx, c, "ns", "bad")
		return note != ""
	})
	for _, want := range []string{"c-bad", bad.Name, "denies the release", filepath.Join(base.QueueDir, ipamserver.QuarantineDir, "c-bad-eth0.json"),
		"back into " + base.QueueDir + " and restart berth-agent on node n1", "kubectl delete ipclaim " + bad.Name} {
		if !strings.Contains(note, want) {
			t.Errorf("Event note %q\ndoes not say %q", note, want)
		}
	}
	add(a, "new", "c-new")

	// Deferred release: DEL answers at once; the release is denied, so
	// the record goes to quarantine after the tries.
	add(a, "bad-2", "c-bad-2")
	if r := a.call(t, protocol.CommandDel, protocol.Request{ContainerID: "c-bad-2", IfName: "eth0", PodNamespace: "ns", PodName: "bad-2"}); r.Error != nil {
		t.Fatalf("DEL of bad-2: %+v", r.Error)
	}
	poll.Until(t, 30*time.Second, "the deferred release's record in quarantine", func() bool {
		return len(quarantined(t, base.QueueDir)) == 3
	})
	if _, err := os.Stat(protocol.QueueFile(base.QueueDir, &protocol.Request{ContainerID: "c-bad-2", IfName: "eth0"})); !os.IsNotExist(err) {
		t.Errorf("bad-2's record still queued: %v", err)
	}
	if got := claimOf("c-bad-2"); got == nil || got.Spec.State != v1alpha1.ClaimBound {
		t.Errorf("bad-2's claim after its DEL was quarantined: %v, want still Bound", got)
	}
	if v, _ := promtest.Value(t, a.reg, "berth_agent_ipam_del_records_quarantined", nil); v != 3 {
		t.Errorf("berth_agent_ipam_del_records_quarantined = %v, want 3", v)
	}
	poll.Until(t, 10*time.Second, "no release pending", func() bool {
		v, _ := promtest.Value(t, a.reg, "berth_agent_ipam_releases_pending", nil)
		return v == 0
	})
	poll.Until(t, 30*time.Second, "an Event on pod bad-2", func() bool { return quarantineEvent(t, ctx, c, "ns", "bad-2") != "" })
	if r := a.call(t, protocol.CommandStatus, protocol.Request{}); r.Error != nil {
		t.Errorf("STATUS after the quarantines: %+v", r.Error)
	}
}

func equalStrings(a, b []string) bool {
	return strings.Join(a, "\x00") == strings.Join(b, "\x00")
}

// TestServer_Start_quarantinesMalformedDEL_inMemoryAPIServer: records in
// the queue that cannot be read as a DEL (not JSON, no container ID, a
// directory) move to quarantine with an Event on the Node (a recorder
// that keeps the Events in memory), and the good record beside them runs.
func TestServer_Start_quarantinesMalformedDEL_inMemoryAPIServer(t *testing.T) {
	rec := events.NewFakeRecorder(10)
	var queue string
	h := serve(t, func(c *ipamserver.Config) {
		queue = c.QueueDir
		c.Recorder = rec
		if err := os.MkdirAll(filepath.Join(queue, "dir.json"), 0o700); err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string]string{"garbage.json": "{", "noid.json": `{"ifName":"eth0"}`, "good-eth0.json": `{"containerID":"good","ifName":"eth0"}`} {
			if err := os.WriteFile(filepath.Join(queue, name), []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	})
	if got, want := quarantined(t, queue), []string{"dir.json", "garbage.json", "noid.json"}; !equalStrings(got, want) {
		t.Errorf("quarantine: %v, want %v", got, want)
	}
	if left, _ := filepath.Glob(filepath.Join(queue, "*.json")); len(left) != 0 {
		t.Errorf("queue after the start: %v, want empty", left)
	}
	if v, _ := promtest.Value(t, h.reg, "berth_agent_ipam_del_records_quarantined", nil); v != 3 {
		t.Errorf("berth_agent_ipam_del_records_quarantined = %v, want 3", v)
	}
	for range 3 {
		select {
		case e := <-rec.Events:
			if !strings.HasPrefix(e, "Warning "+ipamserver.ReasonReleaseQuarantined+" Quarantined a queued DEL record that cannot be read") {
				t.Errorf("Event %q", e)
			}
		default:
			t.Fatal("fewer than 3 Events")
		}
	}
}

// forbiddingStore is an API server whose RBAC forbids every write of one
// claim.
type forbiddingStore struct {
	ipalloc.Store
	claim  atomic.Pointer[string]
	denied atomic.Int32
}

func (f *forbiddingStore) forbidden(name string) error {
	if p := f.claim.Load(); p == nil || *p != name {
		return nil
	}
	f.denied.Add(1)
	return fmt.Errorf("update ipclaim %s: %w", name, apierrors.NewForbidden(schema.GroupResource{Group: "berth.io", Resource: "ipclaims"}, name,
		errors.New(`User "system:serviceaccount:berth-system:berth-agent" cannot update resource "ipclaims"`)))
}

func (f *forbiddingStore) Update(ctx context.Context, c *v1alpha1.IPClaim) error {
	if err := f.forbidden(c.Name); err != nil {
		return err
	}
	return f.Store.Update(ctx, c)
}

func (f *forbiddingStore) Delete(ctx context.Context, c *v1alpha1.IPClaim) error {
	if err := f.forbidden(c.Name); err != nil {
		return err
	}
	return f.Store.Delete(ctx, c)
}

// TestServer_deferRelease_quarantineRepeatedDEL_inMemoryAPIServer: the
// runtime repeats the DEL of a container whose release RBAC forbids (an
// in-memory API server): both releases stop once the record is
// quarantined (nothing stays pending), the claim stays Bound, and the
// Events (a recorder that keeps them in memory) name the claim.
func TestServer_deferRelease_quarantineRepeatedDEL_inMemoryAPIServer(t *testing.T) {
	rec := events.NewFakeRecorder(10)
	dbg := &lockedbuf.Buffer{}
	defer func() {
		if t.Failed() {
			t.Log(dbg.String())
		}
	}()
	fs := &forbiddingStore{}
	var queue string
	h := serve(t, func(c *ipamserver.Config) {
		c.DeferRelease, c.Recorder, queue = true, rec, c.QueueDir
		c.Logger = slog.New(slog.NewTextHandler(dbg, &slog.HandlerOptions{Level: slog.LevelDebug}))
		fs.Store = c.Store
		c.Store = fs
	})
	p := h.pod("db-0", nil)
	if r := h.call(protocol.CommandAdd, protocol.Request{ContainerID: "c1", IfName: "eth0", PodNamespace: "ns", PodName: "db-0", PodUID: string(p.UID)}); r.Error != nil {
		t.Fatalf("ADD: %+v", r.Error)
	}
	claim := h.store.Claims()[0].Name
	fs.claim.Store(&claim)
	for range 2 {
		if r := h.call(protocol.CommandDel, protocol.Request{ContainerID: "c1", IfName: "eth0", PodNamespace: "ns", PodName: "db-0"}); r.Error != nil {
			t.Fatalf("DEL: %+v", r.Error)
		}
	}
	poll.Until(t, 10*time.Second, "no release pending", func() bool { return gauge(t, h.reg, "berth_agent_ipam_releases_pending") == 0 })
	if got, want := quarantined(t, queue), []string{"c1-eth0.json"}; !equalStrings(got, want) {
		t.Errorf("quarantine: %v, want %v", got, want)
	}
	if left, _ := filepath.Glob(filepath.Join(queue, "*.json")); len(left) != 0 {
		t.Errorf("queue: %v, want empty", left)
	}
	if c := h.store.Claims(); len(c) != 1 || c[0].Spec.State != v1alpha1.ClaimBound || c[0].Spec.ContainerID != "c1" {
		t.Errorf("claims: %+v, want c1's still Bound", c)
	}
	// Each DEL's release tries QuarantineAfter times, then stops.
	want := int32(2 * ipamserver.DefaultQuarantineAfter)
	poll.Until(t, 5*time.Second, "both releases' tries", func() bool { return fs.denied.Load() >= want })
	time.Sleep(time.Second)
	if n := fs.denied.Load(); n != want {
		t.Errorf("%d denied writes a second after the quarantine, want %d: the releases did not stop", n, want)
	}
	select {
	case e := <-rec.Events:
		if !strings.HasPrefix(e, "Warning "+ipamserver.ReasonReleaseQuarantined+" Quarantined the DEL of container c1") || !strings.Contains(e, claim) {
			t.Errorf("Event %q", e)
		}
	default:
		t.Error("no Event")
	}
}
