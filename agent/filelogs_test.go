package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/berth-io/berth/agent/logdirs"
	"github.com/berth-io/berth/agent/nriplugin"
	"github.com/berth-io/berth/agent/nriplugin/nritest"
	"github.com/berth-io/berth/test/envtest"
	"github.com/berth-io/berth/test/poll"
	"github.com/berth-io/berth/test/runnable"
)

// TestRun_fileLogs: with file logs on, the agent mounts a container's log
// directory, and a bad KUBERNETES_FILELOGS fails the container and is a
// Warning Event on its pod, written with the agent's own RBAC.
func TestRun_fileLogs(t *testing.T) {
	admin := envtest.Start(t)
	cs := kubernetes.NewForConfigOrDie(admin)
	envtest.Apply(t, admin, berthRBAC)
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(admin)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:berth-system:berth-agent"}
	rt := nritest.New(t, t.TempDir())
	rt.Start()
	root := filepath.Join(t.TempDir(), "logs")

	runnable.Start(t, 10*time.Second, func(ctx context.Context) error {
		return Run(ctx, Config{
			RestConfig:             cfg,
			NodeName:               "node-a",
			MetricsBindAddress:     "0",
			HealthProbeBindAddress: "0",
			ShutdownTimeout:        5 * time.Second,
			NRI:                    nriplugin.Config{SocketPath: rt.Socket(), MinBackoff: 10 * time.Millisecond},
			FileLogs:               &logdirs.Config{Root: root, Interval: time.Hour},
			Logger:                 slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
	})

	pod := &api.PodSandbox{Id: "sandbox-1", Name: "web-0", Namespace: "shop", Uid: "uid-web-0"}
	good := &api.Container{Id: "c1", PodSandboxId: "sandbox-1", Name: "app", Env: []string{"KUBERNETES_FILELOGS=/app/logs"}}
	var rsp *api.CreateContainerResponse
	poll.Until(t, 30*time.Second, "the plugin to take CreateContainer", func() bool {
		var err error
		rsp, err = rt.CreateContainer(pod, good)
		return err == nil && len(rsp.GetAdjust().GetMounts()) == 1
	})
	if got, want := rsp.GetAdjust().GetMounts()[0].Source, root+"/shop_web-0_uid-web-0/app/app-logs"; got != want {
		t.Errorf("mount source = %s, want %s", got, want)
	}
	if st, err := os.Stat(root + "/shop_web-0_uid-web-0/app/app-logs"); err != nil || !st.IsDir() {
		t.Errorf("log directory: %v", err)
	}

	bad := &api.Container{Id: "c2", PodSandboxId: "sandbox-1", Name: "bad", Env: []string{"KUBERNETES_FILELOGS=logs"}}
	if _, err := rt.CreateContainer(pod, bad); err == nil || !strings.Contains(err.Error(), `KUBERNETES_FILELOGS="logs": path "logs" is relative`) {
		t.Fatalf("CreateContainer(bad) err = %v", err)
	}
	want := `container "bad": KUBERNETES_FILELOGS="logs": path "logs" is relative: want an absolute path (starting with "/")`
	poll.Until(t, 30*time.Second, "the FileLogsRejected event", func() bool {
		evs, err := cs.EventsV1().Events("shop").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatalf("list events: %v", err)
		}
		for _, ev := range evs.Items {
			if ev.Regarding.Kind == "Pod" && ev.Regarding.Name == "web-0" && string(ev.Regarding.UID) == "uid-web-0" &&
				ev.Type == corev1.EventTypeWarning && ev.Reason == logdirs.ReasonRejected && ev.Note == want &&
				ev.ReportingController == Name {
				return true
			}
		}
		return false
	})
}
