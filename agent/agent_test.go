package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	nrilog "github.com/containerd/nri/pkg/log"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/berth-io/berth/agent/nriplugin"
	"github.com/berth-io/berth/agent/nriplugin/nritest"
	"github.com/berth-io/berth/test/envtest"
	"github.com/berth-io/berth/test/poll"
)

func TestMain(m *testing.M) {
	// The fake runtime logs through NRI's global logger (logrus by default).
	nrilog.Set(nriplugin.NewNRILogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	os.Exit(m.Run())
}

func TestRun(t *testing.T) {
	admin := envtest.Start(t)
	// The agent runs with its ServiceAccount's permissions from deploy/.
	applyRBAC(t, kubernetes.NewForConfigOrDie(admin), "../deploy/base/rbac.yaml")
	cfg := rest.CopyConfig(admin)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:berth-system:berth-agent"}
	rt := nritest.New(t, t.TempDir())
	metricsAddr, probeAddr := freeAddr(t), freeAddr(t)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			RestConfig:             cfg,
			NodeName:               "node-a",
			MetricsBindAddress:     metricsAddr,
			HealthProbeBindAddress: probeAddr,
			ShutdownTimeout:        5 * time.Second,
			NRI: nriplugin.Config{
				SocketPath: rt.Socket(),
				MinBackoff: 10 * time.Millisecond,
				MaxBackoff: 100 * time.Millisecond,
			},
			Logger: logger,
		})
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run() = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of cancel")
		}
	}
	t.Cleanup(stop)

	// Step 1: alive, but not ready without the runtime.
	poll.Until(t, 30*time.Second, "/healthz 200", func() bool { return get(t, "http://"+probeAddr+"/healthz").code == http.StatusOK })
	if r := get(t, "http://"+probeAddr+"/readyz"); r.code != http.StatusInternalServerError {
		t.Errorf("/readyz before NRI connected = %d %q, want 500", r.code, r.body)
	}

	// Step 2: the runtime comes up; the agent connects and is ready.
	rt.Start()
	poll.Until(t, 30*time.Second, "/readyz 200", func() bool { return get(t, "http://"+probeAddr+"/readyz").code == http.StatusOK })

	// Step 3: /metrics has the build, process, Go and NRI metrics.
	m := get(t, "http://"+metricsAddr+"/metrics")
	if m.code != http.StatusOK {
		t.Fatalf("/metrics = %d", m.code)
	}
	for _, want := range []string{
		`berth_build_info{commit="dev",goversion="` + runtime.Version() + `",version="dev"} 1`,
		"\nprocess_resident_memory_bytes ",
		"\ngo_goroutines ",
		"\nberth_agent_nri_connected 1",
		"\nberth_agent_nri_connects_total 1",
	} {
		if !strings.Contains(m.body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// Step 4: the connect is an Event on the Node.
	cs := kubernetes.NewForConfigOrDie(admin)
	poll.Until(t, 30*time.Second, "NRIConnected event on node-a", func() bool {
		evs, err := cs.EventsV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatalf("list events: %v", err)
		}
		for _, ev := range evs.Items {
			if ev.Regarding.Kind == "Node" && ev.Regarding.Name == "node-a" && ev.Reason == "NRIConnected" &&
				ev.ReportingController == Name && ev.Note == "berth-agent connected to containerd v2.2.9 over NRI" {
				return true
			}
		}
		return false
	})

	// Step 5: SIGTERM's context ends Run in time.
	stop()
}

// applyRBAC creates the ClusterRoles and ClusterRoleBindings in the YAML file.
func applyRBAC(t *testing.T, cs kubernetes.Interface, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			return
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var meta metav1.TypeMeta
		if err := json.Unmarshal(raw, &meta); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		ctx := context.Background()
		switch meta.Kind {
		case "ClusterRole":
			var o rbacv1.ClusterRole
			err = json.Unmarshal(raw, &o)
			if err == nil {
				_, err = cs.RbacV1().ClusterRoles().Create(ctx, &o, metav1.CreateOptions{})
			}
		case "ClusterRoleBinding":
			var o rbacv1.ClusterRoleBinding
			err = json.Unmarshal(raw, &o)
			if err == nil {
				_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &o, metav1.CreateOptions{})
			}
		case "Role":
			var o rbacv1.Role
			err = json.Unmarshal(raw, &o)
			if err == nil {
				ensureNamespace(t, cs, o.Namespace)
				_, err = cs.RbacV1().Roles(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			}
		case "RoleBinding":
			var o rbacv1.RoleBinding
			err = json.Unmarshal(raw, &o)
			if err == nil {
				ensureNamespace(t, cs, o.Namespace)
				_, err = cs.RbacV1().RoleBindings(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			}
		default:
			t.Fatalf("%s: unexpected kind %q", path, meta.Kind)
		}
		if err != nil {
			t.Fatalf("%s: %s: %v", path, meta.Kind, err)
		}
	}
}

// ensureNamespace creates namespace ns unless it exists.
func ensureNamespace(t *testing.T, cs kubernetes.Interface, ns string) {
	t.Helper()
	_, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("namespace %s: %v", ns, err)
	}
}

type response struct {
	code int
	body string
}

func get(t *testing.T, url string) response {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	rsp, err := c.Get(url)
	if err != nil {
		return response{}
	}
	defer rsp.Body.Close()
	b, err := io.ReadAll(rsp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return response{code: rsp.StatusCode, body: string(b)}
}

// freeAddr returns a loopback address with a port that was free just now:
// the manager's servers do not tell which port they bound.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
