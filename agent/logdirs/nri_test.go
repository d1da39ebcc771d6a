package logdirs

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"

	"github.com/berth-io/berth/agent/nriplugin"
	"github.com/berth-io/berth/agent/nriplugin/nritest"
	"github.com/berth-io/berth/hooks/filelogs"
	"github.com/berth-io/berth/test/poll"
	"github.com/berth-io/berth/test/runnable"
)

func TestMain(m *testing.M) {
	// The runtime side logs through NRI's global logger (logrus by default).
	nrilog.Set(nriplugin.NewNRILogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))))
	os.Exit(m.Run())
}

// TestManager_nri runs the manager as a hook of the agent's NRI plugin
// against the real runtime side of NRI (pkg/adaptation, in process).
func TestManager_nri(t *testing.T) {
	e := newTestEnv(t, time.Hour)
	rt := nritest.New(t, t.TempDir())
	running := testPod()
	late := testContainer("late", "KUBERNETES_FILELOGS=/app/logs")
	rt.Pods = []*api.PodSandbox{running}
	rt.Containers = []*api.Container{late}
	rt.Start()
	p, err := nriplugin.New(nriplugin.Config{
		SocketPath: rt.Socket(),
		Hooks:      []nriplugin.Hook{e.m},
		Logger:     slog.New(slog.NewTextHandler(e.logs, nil)),
		MinBackoff: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	startPlugin(t, p)
	poll.Until(t, 10*time.Second, "the Synchronize warning", func() bool { return len(e.rec.got()) == 1 })
	rt.WaitRegistered()
	if got := e.rec.got()[0]; !strings.HasPrefix(got, `Warning FileLogsNotMounted Synchronize shop/web-0 container "late" asks for file logs`) {
		t.Errorf("event = %q", got)
	}

	// A new pod's container gets its mounts.
	pod := &api.PodSandbox{Id: "sandbox-new", Name: "api-0", Namespace: "shop", Uid: "uid-api-0"}
	if err := rt.RunPodSandbox(pod); err != nil {
		t.Fatal(err)
	}
	rsp, err := rt.CreateContainer(pod, testContainer("app", "KUBERNETES_FILELOGS=/app/logs,/app/audit"))
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	var got []string
	for _, m := range rsp.GetAdjust().GetMounts() {
		got = append(got, m.Destination+"="+strings.TrimPrefix(m.Source, e.root))
	}
	want := []string{"/app/logs=/shop_api-0_uid-api-0/app/app-logs", "/app/audit=/shop_api-0_uid-api-0/app/app-audit"}
	if !slices.Equal(got, want) {
		t.Errorf("mounts = %q, want %q", got, want)
	}
	if !exists(filepath.Join(e.root, "shop_api-0_uid-api-0", "app", filelogs.MetadataFile)) {
		t.Error("no metadata file")
	}

	// A bad value fails the creation; the runtime's caller gets the text.
	_, err = rt.CreateContainer(pod, testContainer("bad", "KUBERNETES_FILELOGS=/app/../etc"))
	wantErr := `hook filelogs: KUBERNETES_FILELOGS="/app/../etc": path "/app/../etc" contains "..": want a path without ".."`
	if err == nil || !strings.Contains(err.Error(), wantErr) {
		t.Errorf("CreateContainer err = %v, want it to contain %q", err, wantErr)
	}

	// The pod goes: its directory is marked.
	if err := rt.RemovePodSandbox(pod); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the gone mark", func() bool { return exists(filepath.Join(e.root, "shop_api-0_uid-api-0", filelogs.GoneFile)) })
}

// startPlugin runs p until the test ends and waits until it is connected.
func startPlugin(t *testing.T, p *nriplugin.Plugin) {
	t.Helper()
	runnable.Start(t, 5*time.Second, p.Start)
	poll.Until(t, 10*time.Second, "the plugin to connect", p.Connected)
}
