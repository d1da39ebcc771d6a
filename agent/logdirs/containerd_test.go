package logdirs

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-io/berth/agent/nriplugin"
	"github.com/berth-io/berth/hooks/filelogs"
	"github.com/berth-io/berth/test/containerdtest"
	"github.com/berth-io/berth/test/poll"
)

// TestManager_containerd drives a real containerd (its own, see
// test/containerdtest) through CRI, as kubelet does, with the agent's NRI
// plugin and the file-logs hook connected to it.
func TestManager_containerd(t *testing.T) {
	ctrd := containerdtest.Start(t)
	e := newTestEnv(t, time.Hour)
	p, err := nriplugin.New(nriplugin.Config{
		SocketPath: ctrd.NRISocket,
		Hooks:      []nriplugin.Hook{e.m},
		Logger:     slog.New(slog.NewTextHandler(e.logs, nil)),
		MinBackoff: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	startPlugin(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rt := ctrd.Runtime

	podID, podCfg, err := ctrd.RunPod(ctx, "shop", "web-0", "uid-web-0", nil)
	if err != nil {
		t.Fatal(err)
	}
	// run creates and starts a container and waits for it to exit 0.
	run := func(cfg *runtimeapi.ContainerConfig) {
		t.Helper()
		c, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: cfg, SandboxConfig: podCfg})
		if err != nil {
			t.Fatalf("CreateContainer %s: %v", cfg.GetMetadata().GetName(), err)
		}
		if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.GetContainerId()}); err != nil {
			t.Fatalf("StartContainer %s: %v", cfg.GetMetadata().GetName(), err)
		}
		code, err := ctrd.WaitExited(ctx, c.GetContainerId())
		if err != nil || code != 0 {
			t.Fatalf("container %s: exit %d, %v", cfg.GetMetadata().GetName(), code, err)
		}
	}
	env := []string{"KUBERNETES_FILELOGS=/app/logs,/app/audit"}
	ctrDir := filepath.Join(e.root, "shop_web-0_uid-web-0", "app")

	// Step 1: a file written inside appears on the host, in its own directory per path.
	run(ctrd.ContainerConfig("app", 0, env, "/bin/sh", "-c", "echo one >> /app/logs/app.log; echo audit >> /app/audit/audit.log"))
	for f, want := range map[string]string{"app-logs/app.log": "one\n", "app-audit/audit.log": "audit\n"} {
		if b, err := os.ReadFile(filepath.Join(ctrDir, f)); err != nil || string(b) != want {
			t.Errorf("host %s = %q, %v; want %q", f, b, err, want)
		}
	}
	md, err := os.ReadFile(filepath.Join(ctrDir, filelogs.MetadataFile))
	if err != nil || !strings.Contains(string(md), `"uid": "uid-web-0"`) || !strings.Contains(string(md), `"app": "web-0"`) {
		t.Errorf("metadata = %s, %v", md, err)
	}

	// Step 2: the container restarts (kubelet makes attempt 1 in the same
	// pod): same directory, the file is still there, the app appends.
	run(ctrd.ContainerConfig("app", 1, env, "/bin/sh", "-c", "echo two >> /app/logs/app.log"))
	if b, err := os.ReadFile(filepath.Join(ctrDir, "app-logs/app.log")); err != nil || string(b) != "one\ntwo\n" {
		t.Errorf("after the restart app.log = %q, %v; want \"one\\ntwo\\n\"", b, err)
	}

	// Step 3: a container that runs as another user can write too.
	nonRoot := ctrd.ContainerConfig("nonroot", 0, []string{"KUBERNETES_FILELOGS=/var/log/app"},
		"/bin/sh", "-c", "echo hi > /var/log/app/x.log")
	nonRoot.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
		RunAsUser: &runtimeapi.Int64Value{Value: 1000}}}
	run(nonRoot)
	st, err := os.Stat(filepath.Join(e.root, "shop_web-0_uid-web-0", "nonroot", "var-log-app", "x.log"))
	if err != nil || st.Sys().(*syscall.Stat_t).Uid != 1000 {
		t.Errorf("x.log written as uid 1000: %v, %v", st, err)
	}

	// Step 4: a bad value fails CreateContainer; the CRI caller (kubelet)
	// gets the text.
	bad := ctrd.ContainerConfig("bad", 0, []string{"KUBERNETES_FILELOGS=logs"}, "/bin/true")
	_, err = rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: bad, SandboxConfig: podCfg})
	want := `hook filelogs: KUBERNETES_FILELOGS="logs": path "logs" is relative: want an absolute path (starting with "/")`
	if err == nil || !strings.Contains(status.Convert(err).Message(), want) {
		t.Fatalf("CreateContainer(bad) err = %v\nwant it to contain %q", err, want)
	}
	t.Logf("CRI error: %s", status.Convert(err).Message())

	// Step 5: the pod goes; its directory is marked with the time.
	if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the gone mark", func() bool { return exists(filepath.Join(e.root, "shop_web-0_uid-web-0", filelogs.GoneFile)) })
}

// TestManager_containerd_requiredPlugins: NRI fails open, unless a pod
// requires Berth's plugin through containerd's default validator
// (containerd 2.2+, default_validator.enable = true): then a container
// created while the agent is away fails instead of starting without its
// log directories.
func TestManager_containerd_requiredPlugins(t *testing.T) {
	ctrd := containerdtest.Start(t)
	e := newTestEnv(t, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rt := ctrd.Runtime
	podID, podCfg, err := ctrd.RunPod(ctx, "shop", "web-0", "uid-web-0",
		map[string]string{"required-plugins.noderesource.dev/container.app": `["berth"]`})
	if err != nil {
		t.Fatal(err)
	}
	cfg := ctrd.ContainerConfig("app", 0, []string{"KUBERNETES_FILELOGS=/app/logs"}, "/bin/true")
	create := func() error {
		_, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: cfg, SandboxConfig: podCfg})
		return err
	}

	// The agent is away: the container fails.
	err = create()
	want := `required plugin "berth" not present`
	if err == nil || !strings.Contains(status.Convert(err).Message(), want) {
		t.Fatalf("CreateContainer without the agent: %v, want it to contain %q", err, want)
	}
	t.Logf("CRI error: %s", status.Convert(err).Message())

	// The agent connects: the container is created with its mount.
	p, err := nriplugin.New(nriplugin.Config{SocketPath: ctrd.NRISocket, Hooks: []nriplugin.Hook{e.m},
		Logger: slog.New(slog.NewTextHandler(e.logs, nil)), MinBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	startPlugin(t, p)
	poll.Until(t, 10*time.Second, "CreateContainer to pass", func() bool { return create() == nil })
	if !exists(filepath.Join(e.root, "shop_web-0_uid-web-0", "app", "app-logs")) {
		t.Error("no log directory")
	}
}

// TestManager_containerd_synchronize: a container created while the agent
// was away runs without its mount (NRI fails open); when the agent
// connects, containerd's Synchronize shows it, and the agent warns. A
// container created with the agent connected is not reported on the next
// connect.
func TestManager_containerd_synchronize(t *testing.T) {
	ctrd := containerdtest.Start(t)
	e := newTestEnv(t, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rt := ctrd.Runtime
	podID, podCfg, err := ctrd.RunPod(ctx, "shop", "web-0", "uid-web-0", nil)
	if err != nil {
		t.Fatal(err)
	}
	start := func(name string) {
		t.Helper()
		cfg := ctrd.ContainerConfig(name, 0, []string{"KUBERNETES_FILELOGS=/app/logs"}, "/bin/sleep", "3600")
		c, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: cfg, SandboxConfig: podCfg})
		if err != nil {
			t.Fatalf("CreateContainer %s: %v", name, err)
		}
		if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.GetContainerId()}); err != nil {
			t.Fatalf("StartContainer %s: %v", name, err)
		}
	}
	connect := func() context.CancelFunc {
		p, err := nriplugin.New(nriplugin.Config{SocketPath: ctrd.NRISocket, Hooks: []nriplugin.Hook{e.m},
			Logger: slog.New(slog.NewTextHandler(e.logs, nil)), MinBackoff: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		pctx, pcancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { _ = p.Start(pctx); close(done) }()
		poll.Until(t, 10*time.Second, "the plugin to connect", p.Connected)
		return func() { pcancel(); <-done }
	}

	start("early") // no plugin: created without the mount
	stop := connect()
	want := `Warning FileLogsNotMounted Synchronize shop/web-0 container "early" asks for file logs (KUBERNETES_FILELOGS="/app/logs") but runs without a host directory at /app/logs: it was created while berth-agent was not connected to the runtime; delete the pod to get them`
	poll.Until(t, 10*time.Second, "the warning", func() bool { return len(e.rec.got()) == 1 })
	if got := e.rec.got()[0]; got != want {
		t.Errorf("event = %q\nwant %q", got, want)
	}
	start("late") // with the plugin: mounted
	stop()
	time.Sleep(200 * time.Millisecond) // containerd notices the closed connection

	stop = connect()
	defer stop()
	poll.Until(t, 10*time.Second, "the second warning", func() bool { return len(e.rec.got()) == 2 })
	if got := e.rec.got()[1]; got != want {
		t.Errorf("second event = %q, want only the early container again", got)
	}
	time.Sleep(200 * time.Millisecond) // a report of "late" would come in the same Synchronize
	if got := value(t, e.m.metrics.unmounted); got != 1 {
		t.Errorf("unmounted_containers = %v, want 1", got)
	}
	if n := len(e.rec.got()); n != 2 {
		t.Errorf("%d events, want 2: %q", n, e.rec.got())
	}
}
