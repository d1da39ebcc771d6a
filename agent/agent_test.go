package agent

import (
	"context"
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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	envtest.Apply(t, admin, berthRBAC)
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

// berthRBAC is the agent's RBAC of deploy/base and the namespace of its
// Role, for envtest.Apply.
var berthRBAC = []string{"../deploy/base/namespace.yaml", "../deploy/base/rbac.yaml"}

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
