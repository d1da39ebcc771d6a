package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/agent/nriplugin"
	"github.com/berth-io/berth/agent/nriplugin/nritest"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/internal/agentlease"
	"github.com/berth-io/berth/test/envtest"
	"github.com/berth-io/berth/test/poll"
	"github.com/berth-io/berth/test/runnable"
)

// TestRun_ipam runs the agent with its IPAM server, with the RBAC and CRDs
// of deploy/base, and allocates through the socket.
func TestRun_ipam(t *testing.T) {
	admin := envtest.Start(t, envtest.Options{CRDDirectoryPaths: []string{"../deploy/base/crds"}})
	envtest.Apply(t, admin, berthRBAC)
	cfg := rest.CopyConfig(admin)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:berth-system:berth-agent"}
	rt := nritest.New(t, t.TempDir())
	rt.Start()
	metricsAddr, probeAddr := freeAddr(t), freeAddr(t)
	sock := filepath.Join(t.TempDir(), "berth", "ipam.sock")

	runnable.Start(t, time.Minute, func(ctx context.Context) error {
		return Run(ctx, Config{
			RestConfig: cfg, NodeName: "node-a", MetricsBindAddress: metricsAddr, HealthProbeBindAddress: probeAddr,
			ShutdownTimeout: 5 * time.Second,
			NRI:             nriplugin.Config{SocketPath: rt.Socket(), MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond},
			IPAM: &ipamserver.Config{SocketPath: sock, QueueDir: filepath.Join(filepath.Dir(sock), "queue"),
				AttachmentDir: filepath.Join(filepath.Dir(sock), "attachments")},
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
	})
	poll.Until(t, 30*time.Second, "/readyz 200", func() bool { return get(t, "http://"+probeAddr+"/readyz").code == http.StatusOK })

	sch := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(sch); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(sch); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(admin, client.Options{Scheme: sch})
	if err != nil {
		t.Fatal(err)
	}
	bg := context.Background()
	if err := c.Create(bg, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "pods"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.244.0.0/24", Gateway: "10.244.0.1"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(bg, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app"}}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "p"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	if err := c.Create(bg, pod); err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	var resp *http.Response
	body, _ := json.Marshal(protocol.Request{ContainerID: "c1", IfName: "eth0", PodNamespace: "app", PodName: "p", PodUID: string(pod.UID)})
	resp, err = hc.Post("http://berth/v1/add", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r protocol.Response
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Error != nil || len(r.IPs) != 1 || r.IPs[0].Gateway != "10.244.0.1" {
		t.Fatalf("ADD: %+v %v", r, err)
	}
	var claims v1alpha1.IPClaimList
	if err := c.List(bg, &claims); err != nil || len(claims.Items) != 1 || claims.Items[0].Spec.Node != "node-a" || claims.Items[0].Spec.Pod.UID != pod.UID {
		t.Fatalf("claims: %+v %v", claims.Items, err)
	}
	// With IPAM on, the agent renews its node's lease with the Role of
	// deploy/base: berth-controller leaves node-a's claims to it.
	poll.Until(t, 30*time.Second, "the agent's lease", func() bool {
		var l coordinationv1.Lease
		err := c.Get(bg, client.ObjectKey{Namespace: agentlease.DefaultNamespace, Name: agentlease.Name("node-a")}, &l)
		return err == nil && l.Spec.RenewTime != nil && *l.Spec.HolderIdentity == "node-a"
	})
	poll.Until(t, 30*time.Second, "the allocation histogram in /metrics", func() bool {
		return strings.Contains(get(t, "http://"+metricsAddr+"/metrics").body, `berth_agent_ipam_allocation_duration_seconds_count{result="ok"} 1`)
	})
}
