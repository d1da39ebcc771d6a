package chaos_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/internal/cachetrim"
	"github.com/berth-io/berth/test/poll"
	"github.com/berth-io/berth/test/promtest"
	"github.com/berth-io/berth/test/runnable"
)

func init() { ctrllog.SetLogger(logr.Discard()) }

// serveWebhook serves review over HTTPS on loopback with a certificate of
// its own, and returns the URL and the CA bundle to reach it.
func serveWebhook(t *testing.T, review func(*admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse) (string, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "chaos-webhook"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var ar admissionv1.AdmissionReview
			if err := json.NewDecoder(r.Body).Decode(&ar); err != nil || ar.Request == nil {
				http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
				return
			}
			resp := review(ar.Request)
			resp.UID = ar.Request.UID
			ar.Response, ar.Request = resp, nil
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(&ar)
		})}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return "https://" + l.Addr().String() + "/validate", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestFault_webhookDeniesQueuedDEL: while berth-agent is down, berth-ipam
// queues the DELs of two containers; an admission webhook denies every
// write of one of their claims. When the agent starts, it still serves
// its socket (an ADD works), the other DEL ran, and the denied record is
// quarantined after a bounded number of tries, with its claim still held,
// an Event on its pod and the metric.
func TestFault_webhookDeniesQueuedDEL(t *testing.T) {
	a := startAPI(t)
	cfg, scheme, c := a.cfg, a.scheme, a.client
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	create := func(obj client.Object) { t.Helper(); a.create(ctx, t, obj) }

	create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}})
	create(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "pods"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.244.0.0/24"}})
	claims := map[string]*v1alpha1.IPClaim{}
	pods := map[string]*corev1.Pod{}
	for i, name := range []string{"victim", "bystander", "next"} {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		create(p)
		pods[name] = p
		if name == "next" {
			continue
		}
		// The claim berth-agent committed at the container's ADD.
		addr := netip.AddrFrom4([4]byte{10, 244, 0, byte(10 + i)})
		cl := &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.ClaimName("pods", addr),
			Labels: map[string]string{v1alpha1.LabelPool: "pods", v1alpha1.LabelNode: "node-a", v1alpha1.LabelPodUID: string(p.UID)}},
			Spec: v1alpha1.IPClaimSpec{Pool: "pods", Address: addr.String(), State: v1alpha1.ClaimBound, ContainerID: "ctr-" + name,
				Interface: "eth0", Node: "node-a", Pod: v1alpha1.PodRef{Namespace: "shop", Name: name, UID: p.UID}}}
		create(cl)
		claims[name] = cl
	}

	var denied atomic.Int32
	victim := claims["victim"].Name
	url, ca := serveWebhook(t, func(r *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
		if r.Name != victim {
			return &admissionv1.AdmissionResponse{Allowed: true}
		}
		if !ptr.Deref(r.DryRun, false) { // the test's probe is a dry run
			denied.Add(1)
		}
		return &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{Message: "chaos: this claim may not change"}}
	})
	create(&admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "chaos-deny-one-claim"},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "deny-one-claim.chaos.berth.io",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: ca},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Update, admissionregistrationv1.Delete},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{"berth.io"}, APIVersions: []string{"*"}, Resources: []string{"ipclaims"}},
			}},
			SideEffects: ptr.To(admissionregistrationv1.SideEffectClassNone), AdmissionReviewVersions: []string{"v1"},
			FailurePolicy: ptr.To(admissionregistrationv1.Fail), TimeoutSeconds: ptr.To[int32](5)}}})
	poll.Until(t, 30*time.Second, "the webhook to be called", func() bool {
		return apierrors.IsBadRequest(c.Delete(ctx, claims["victim"].DeepCopy(), client.DryRunAll))
	})

	// berth-ipam queued both DELs while the agent was down.
	dir := t.TempDir()
	queue := filepath.Join(dir, "ipam-del-queue")
	for _, name := range []string{"victim", "bystander"} {
		if err := protocol.Enqueue(queue, &protocol.Request{ContainerID: "ctr-" + name, IfName: "eth0", PodNamespace: "shop", PodName: name,
			PodUID: string(pods[name].UID)}); err != nil {
			t.Fatal(err)
		}
	}

	mgr, err := manager.New(cfg, manager.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: cachetrim.Options(cache.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	sock := filepath.Join(dir, "ipam.sock")
	srv, err := ipamserver.NewForManager(ctx, mgr, ipamserver.Config{SocketPath: sock, QueueDir: queue, AttachmentDir: filepath.Join(dir, "attachments"),
		Node: "node-a", Registerer: reg, Recorder: mgr.GetEventRecorder("berth-agent"), MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Add(srv); err != nil {
		t.Fatal(err)
	}
	runnable.Start(t, time.Minute, mgr.Start)
	poll.Until(t, 30*time.Second, "the agent to serve its socket", func() bool { return srv.Check(nil) == nil })

	// The socket is served: an ADD works.
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	body, _ := json.Marshal(protocol.Request{ContainerID: "ctr-next", IfName: "eth0", PodNamespace: "shop", PodName: "next", PodUID: string(pods["next"].UID), Pools: []string{"pods"}})
	resp, err := hc.Post("http://berth/v1/"+protocol.CommandAdd, "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("ADD over the socket: %v", err)
	}
	var add protocol.Response
	err = json.NewDecoder(resp.Body).Decode(&add)
	resp.Body.Close()
	if err != nil || add.Error != nil || len(add.IPs) != 1 {
		t.Fatalf("ADD of shop/next: %+v, %v", add, err)
	}

	// The bystander's DEL ran: its claim is gone (not retained: no app).
	if err := c.Get(ctx, client.ObjectKeyFromObject(claims["bystander"]), &v1alpha1.IPClaim{}); !apierrors.IsNotFound(err) {
		t.Errorf("bystander's claim after its queued DEL: %v, want it released", err)
	}
	// The victim's claim is held, its record quarantined, not retried.
	var held v1alpha1.IPClaim
	if err := c.Get(ctx, client.ObjectKeyFromObject(claims["victim"]), &held); err != nil || held.Spec.State != v1alpha1.ClaimBound || held.Spec.ContainerID != "ctr-victim" {
		t.Errorf("victim's claim: %+v, %v; want still Bound to ctr-victim", held.Spec, err)
	}
	record := filepath.Join(queue, ipamserver.QuarantineDir, protocol.FileName("ctr-victim", "eth0"))
	if _, err := os.Stat(record); err != nil {
		t.Errorf("quarantined record: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(queue, "*.json")); len(left) != 0 {
		t.Errorf("records left in the queue: %v", left)
	}
	if n := denied.Load(); n != ipamserver.DefaultQuarantineAfter {
		t.Errorf("the webhook denied %d writes of the victim's claim, want %d (the tries before quarantine)", n, ipamserver.DefaultQuarantineAfter)
	}
	if v, _ := promtest.Value(t, reg, "berth_agent_ipam_del_records_quarantined", nil); v != 1 {
		t.Errorf("berth_agent_ipam_del_records_quarantined = %v, want 1", v)
	}
	var note string
	poll.Until(t, 30*time.Second, "an Event on the victim pod", func() bool {
		var evs eventsv1.EventList
		if err := c.List(ctx, &evs, client.InNamespace("shop")); err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Items {
			if e.Regarding.UID == pods["victim"].UID && e.Reason == ipamserver.ReasonReleaseQuarantined && e.Type == corev1.EventTypeWarning {
				note = e.Note
				return true
			}
		}
		return false
	})
	for _, want := range []string{"ctr-victim", victim, record, `admission webhook "deny-one-claim.chaos.berth.io" denied the request: chaos: this claim may not change`} {
		if !strings.Contains(note, want) {
			t.Errorf("Event note %q\ndoes not say %q", note, want)
		}
	}
	time.Sleep(time.Second)
	if n := denied.Load(); n != ipamserver.DefaultQuarantineAfter {
		t.Errorf("the webhook denied %d writes a second after the quarantine, want %d: the record is still retried", n, ipamserver.DefaultQuarantineAfter)
	}
}
