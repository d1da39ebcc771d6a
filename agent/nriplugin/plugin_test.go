package nriplugin

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-io/berth/agent/nriplugin/nritest"
	"github.com/berth-io/berth/test/lockedbuf"
	"github.com/berth-io/berth/test/poll"
	"github.com/berth-io/berth/test/promtest"
	"github.com/berth-io/berth/test/runnable"
	"github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"
	"github.com/prometheus/client_golang/prometheus"
)

func TestMain(m *testing.M) {
	// The runtime side logs through NRI's global logger (logrus by default).
	nrilog.Set(NewNRILogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	os.Exit(m.Run())
}

func TestPlugin_Start(t *testing.T) {
	rt := nritest.New(t, t.TempDir())
	rt.Pods = []*api.PodSandbox{{Id: "pod-running", Name: "db-0", Namespace: "shop"}}
	rt.Containers = []*api.Container{{Id: "ctr-running", PodSandboxId: "pod-running", Name: "postgres",
		State: api.ContainerState_CONTAINER_RUNNING}}

	var (
		logs     lockedbuf.Buffer
		reg      = prometheus.NewRegistry()
		statesMu sync.Mutex
		states   []State
	)
	p, err := New(Config{
		SocketPath: rt.Socket(),
		Logger:     slog.New(slog.NewTextHandler(&logs, nil)),
		Registerer: reg,
		Hooks:      []Hook{envHook{name: "first", key: "FIRST"}, envHook{name: "second", key: "SECOND"}},
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 100 * time.Millisecond,
		OnStateChange: func(s State) {
			statesMu.Lock()
			defer statesMu.Unlock()
			states = append(states, s)
		},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	runnable.Start(t, 5*time.Second, p.Start)

	// Step 1: no runtime yet. The plugin keeps trying and is not ready.
	poll.Until(t, 10*time.Second, "a failed connect attempt", func() bool {
		return strings.Contains(logs.String(), `msg="cannot connect to runtime"`)
	})
	if p.Connected() {
		t.Fatal("Connected() = true before the runtime started")
	}
	if err := p.Check(nil); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Check() = %v, want %v", err, ErrNotConnected)
	}

	// Step 2: the runtime comes up; the plugin registers and synchronizes.
	rt.Start()
	poll.Until(t, 10*time.Second, "Connected()", p.Connected)
	if err := p.Check(&http.Request{}); err != nil {
		t.Fatalf("Check() = %v, want nil", err)
	}
	poll.Until(t, 10*time.Second, "Synchronize", func() bool { return metricValue(t, reg, "berth_agent_nri_events_total", EventSynchronize) == 1 })
	rt.WaitRegistered()

	// Step 3: a container is created: counted, logged, adjusted by the hooks in order.
	pod := &api.PodSandbox{Id: "9f3c2a1b0d4e5f6a7b8c", Name: "web-0", Namespace: "shop", Uid: "uid-web-0"}
	ctr := &api.Container{Id: "4b5c6d7e8f9a0b1c2d3e", PodSandboxId: pod.Id, Name: "nginx",
		State: api.ContainerState_CONTAINER_CREATED}
	rsp, err := rt.CreateContainer(pod, ctr)
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if got, want := envOf(rsp.GetAdjust()), []string{"FIRST=nginx", "SECOND=nginx"}; !slices.Equal(got, want) {
		t.Errorf("adjusted env = %q, want %q", got, want)
	}
	if got := metricValue(t, reg, "berth_agent_nri_events_total", EventCreateContainer); got != 1 {
		t.Errorf("berth_agent_nri_events_total{event=CreateContainer} = %v, want 1", got)
	}
	for _, want := range []string{
		`msg="connected to runtime" runtime=containerd runtime_version=v2.2.9 plugin=10-berth`,
		`msg="synchronized with runtime" pods=1 containers=1`,
		`msg="container event" event=CreateContainer namespace=shop pod=web-0 container=nginx id=4b5c6d7e8f9a`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %s:\n%s", want, logs.String())
		}
	}

	// Step 4: the runtime dies. The plugin notices and is not ready.
	rt.Crash()
	poll.Until(t, 10*time.Second, "!Connected()", func() bool { return !p.Connected() })
	if got := metricValue(t, reg, "berth_agent_nri_connected", ""); got != 0 {
		t.Errorf("berth_agent_nri_connected = %v, want 0", got)
	}
	if want := `msg="lost connection to runtime" runtime=containerd`; !strings.Contains(logs.String(), want) {
		t.Errorf("logs lack %s:\n%s", want, logs.String())
	}

	// Step 5: the runtime restarts on the same socket; the plugin reconnects by itself.
	rt.Start()
	poll.Until(t, 10*time.Second, "Connected() again", p.Connected)
	poll.Until(t, 10*time.Second, "second Synchronize", func() bool { return metricValue(t, reg, "berth_agent_nri_events_total", EventSynchronize) == 2 })
	rt.WaitRegistered()
	if _, err := rt.CreateContainer(pod, ctr); err != nil {
		t.Fatalf("CreateContainer after reconnect: %v", err)
	}
	for name, want := range map[string]float64{
		"berth_agent_nri_connects_total": 2,
		"berth_agent_nri_connected":      1,
	} {
		if got := metricValue(t, reg, name, ""); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := metricValue(t, reg, "berth_agent_nri_events_total", EventCreateContainer); got != 2 {
		t.Errorf("berth_agent_nri_events_total{event=CreateContainer} = %v, want 2", got)
	}
	statesMu.Lock()
	defer statesMu.Unlock()
	want := []State{
		{Connected: true, Runtime: "containerd", RuntimeVersion: "v2.2.9"},
		{Connected: false, Runtime: "containerd", RuntimeVersion: "v2.2.9"},
		{Connected: true, Runtime: "containerd", RuntimeVersion: "v2.2.9"},
	}
	if !slices.Equal(states, want) {
		t.Errorf("OnStateChange got %+v, want %+v", states, want)
	}
}

func TestPlugin_CreateContainer(t *testing.T) {
	pod := &api.PodSandbox{Id: "pod0", Name: "web-0", Namespace: "shop"}
	ctr := &api.Container{Id: "ctr0", PodSandboxId: "pod0", Name: "nginx"}
	tests := []struct {
		name    string
		hooks   []Hook
		wantEnv []string
		wantErr string
	}{
		{name: "no hooks, no adjustment"},
		{name: "hooks that do not apply", hooks: []Hook{nilHook{}, nilHook{}}},
		{
			name:    "adjustments merge in order",
			hooks:   []Hook{envHook{name: "b", key: "B"}, nilHook{}, envHook{name: "a", key: "A"}},
			wantEnv: []string{"B=nginx", "A=nginx"},
		},
		{
			name:    "an error stops the run",
			hooks:   []Hook{envHook{name: "a", key: "A"}, errHook{}, envHook{name: "c", key: "C"}},
			wantErr: `hook broken: env KUBERNETES_FILELOGS: "logs" is not absolute`,
		},
		{
			name:    "a panic is an error",
			hooks:   []Hook{panicHook{}},
			wantErr: "hook panicky: panic: runtime error: index out of range [3] with length 0",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			p, err := New(Config{Hooks: tt.hooks, Registerer: reg, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			h := &handler{p: p}
			adj, upd, err := h.CreateContainer(context.Background(), pod, ctr)
			if got := errString(err); got != tt.wantErr {
				t.Fatalf("err = %q, want %q", got, tt.wantErr)
			}
			if upd != nil {
				t.Errorf("updates = %v, want none", upd)
			}
			if tt.wantEnv == nil && adj != nil {
				t.Errorf("adjustment = %v, want nil", adj)
			}
			if got := envOf(adj); !slices.Equal(got, tt.wantEnv) {
				t.Errorf("env = %q, want %q", got, tt.wantEnv)
			}
			if got := metricValue(t, reg, "berth_agent_nri_events_total", EventCreateContainer); got != 1 {
				t.Errorf("berth_agent_nri_events_total{event=CreateContainer} = %v, want 1", got)
			}
		})
	}
}

func TestNew(t *testing.T) {
	idx := func(i int) *int { return &i }
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "defaults", cfg: Config{}},
		{name: "index 0", cfg: Config{PluginIndex: idx(0)}},
		{name: "index 99", cfg: Config{PluginIndex: idx(99)}},
		{name: "index 100", cfg: Config{PluginIndex: idx(100)}, wantErr: "plugin index 100: want 0 to 99"},
		{name: "negative index", cfg: Config{PluginIndex: idx(-1)}, wantErr: "plugin index -1: want 0 to 99"},
		{name: "name with a slash", cfg: Config{PluginName: "berth/agent"},
			wantErr: `invalid plugin name "berth/agent": contains invalid character '/'`},
		{name: "min above max", cfg: Config{MinBackoff: time.Minute},
			wantErr: "backoff 1m0s to 10s: want 0 < min <= max"},
		{name: "negative min", cfg: Config{MinBackoff: -time.Second},
			wantErr: "backoff -1s to 10s: want 0 < min <= max"},
		{name: "negative connect timeout", cfg: Config{ConnectTimeout: -time.Second},
			wantErr: "connect timeout -1s: want > 0"},
		{name: "nil hook", cfg: Config{Hooks: []Hook{nilHook{}, nil}}, wantErr: "hook 1 is nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if got := errString(err); got != tt.wantErr {
				t.Errorf("New() err = %q, want %q", got, tt.wantErr)
			}
		})
	}
}

func TestNew_registeredTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	for i := range 2 {
		if _, err := New(Config{Registerer: reg}); err != nil {
			t.Fatalf("New #%d: %v", i+1, err)
		}
	}
}

func TestPlugin_newBackoff(t *testing.T) {
	p, err := New(Config{MinBackoff: 250 * time.Millisecond, MaxBackoff: 10 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	b := p.newBackoff()
	var got []time.Duration
	for range 8 {
		got = append(got, b.Step())
	}
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second,
		4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	if !slices.Equal(got, want) {
		t.Errorf("Step() gave %v, want %v", got, want)
	}
	// After a connection, Start begins again with a new backoff.
	fresh := p.newBackoff()
	if got := fresh.Step(); got != 250*time.Millisecond {
		t.Errorf("Step() of a new backoff = %v, want 250ms", got)
	}
}

func TestPlugin_Start_noRuntime(t *testing.T) {
	// Nothing listens: Start must still return promptly when ctx is done.
	p, err := New(Config{SocketPath: t.TempDir() + "/none.sock", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Start(ctx) }()
	time.AfterFunc(50*time.Millisecond, cancel)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Start() = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Start did not return within 5s of cancel")
	}
}

func TestPlugin_Start_silentRuntime(t *testing.T) {
	// Something accepts on the socket but never registers the plugin: each
	// attempt is cut off after ConnectTimeout and retried.
	sock := t.TempDir() + "/nri.sock"
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var (
		connsMu sync.Mutex
		conns   []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		connsMu.Lock()
		defer connsMu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			connsMu.Lock()
			conns = append(conns, c)
			connsMu.Unlock()
		}
	}()
	var logs lockedbuf.Buffer
	p, err := New(Config{
		SocketPath:     sock,
		Logger:         slog.New(slog.NewTextHandler(&logs, nil)),
		ConnectTimeout: 100 * time.Millisecond,
		MinBackoff:     10 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	runnable.Start(t, 5*time.Second, p.Start)
	want := `msg="cannot connect to runtime" err="connect to ` + sock + `: not configured by the runtime within 100ms" attempt=1`
	poll.Until(t, 10*time.Second, "a timed-out attempt", func() bool { return strings.Contains(logs.String(), want) })
	poll.Until(t, 10*time.Second, "a second attempt", func() bool {
		connsMu.Lock()
		defer connsMu.Unlock()
		return len(conns) >= 2
	})
	if p.Connected() {
		t.Error("Connected() = true, want false")
	}
}

// metricValue returns the value of the gauge or counter name from reg, with
// label event=event when event is not empty; -1 when there is none.
func metricValue(t *testing.T, reg *prometheus.Registry, name, event string) float64 {
	t.Helper()
	var labels map[string]string
	if event != "" {
		labels = map[string]string{"event": event}
	}
	v, n := promtest.Value(t, reg, name, labels)
	if n == 0 {
		return -1
	}
	return v
}

func envOf(adj *api.ContainerAdjustment) []string {
	var env []string
	for _, kv := range adj.GetEnv() {
		env = append(env, kv.GetKey()+"="+kv.GetValue())
	}
	return env
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// envHook sets key to the container's name.
type envHook struct{ name, key string }

func (h envHook) Name() string { return h.name }

func (h envHook) CreateContainer(_ *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error) {
	adj := &api.ContainerAdjustment{}
	adj.AddEnv(h.key, ctr.GetName())
	return adj, nil
}

type nilHook struct{}

func (nilHook) Name() string { return "nil" }

func (nilHook) CreateContainer(*api.PodSandbox, *api.Container) (*api.ContainerAdjustment, error) {
	return nil, nil
}

type errHook struct{}

func (errHook) Name() string { return "broken" }

func (errHook) CreateContainer(*api.PodSandbox, *api.Container) (*api.ContainerAdjustment, error) {
	return nil, errors.New(`env KUBERNETES_FILELOGS: "logs" is not absolute`)
}

type panicHook struct{}

func (panicHook) Name() string { return "panicky" }

func (panicHook) CreateContainer(_ *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error) {
	i := len(ctr.GetName()) - 2
	return nil, errors.New(ctr.GetArgs()[i]) // out of range: Args is empty
}

func TestPlugin_hookNotifications(t *testing.T) {
	rt := nritest.New(t, t.TempDir())
	rt.Pods = []*api.PodSandbox{{Id: "pod-running", Name: "db-0", Namespace: "shop", Uid: "uid-db-0"}}
	rt.Containers = []*api.Container{{Id: "ctr-running", PodSandboxId: "pod-running", Name: "postgres",
		State: api.ContainerState_CONTAINER_RUNNING}}
	var logs lockedbuf.Buffer
	rec := &recordingHook{}
	p, err := New(Config{
		SocketPath: rt.Socket(),
		Logger:     slog.New(slog.NewTextHandler(&logs, nil)),
		Hooks:      []Hook{panicHook{}, rec},
		MinBackoff: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	rt.Start()
	runnable.Start(t, 5*time.Second, p.Start)
	poll.Until(t, 10*time.Second, "Synchronize", func() bool { return len(rec.got()) == 1 })
	rt.WaitRegistered()

	pod := &api.PodSandbox{Id: "pod-new", Name: "web-0", Namespace: "shop", Uid: "uid-web-0"}
	if err := rt.RunPodSandbox(pod); err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	if err := rt.RemovePodSandbox(pod); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	poll.Until(t, 10*time.Second, "three notifications", func() bool { return len(rec.got()) == 3 })
	want := []string{"Synchronize pods=db-0 containers=postgres", "RunPodSandbox web-0", "RemovePodSandbox web-0"}
	if got := rec.got(); !slices.Equal(got, want) {
		t.Errorf("notifications = %q, want %q", got, want)
	}
	// panicHook implements none of the optional interfaces: nothing logged.
	if strings.Contains(logs.String(), "hook panicked") {
		t.Errorf("unexpected panic log:\n%s", logs.String())
	}
}

func TestNotifyHooks_panic(t *testing.T) {
	var logs lockedbuf.Buffer
	rec := &recordingHook{}
	notifyHooks(slog.New(slog.NewTextHandler(&logs, nil)), EventRunPodSandbox, []Hook{panickyNotifiee{}, rec},
		func(h RunPodSandboxHook) { h.RunPodSandbox(context.Background(), &api.PodSandbox{Name: "web-0"}) })
	if got, want := rec.got(), []string{"RunPodSandbox web-0"}; !slices.Equal(got, want) {
		t.Errorf("after a panicking hook, notifications = %q, want %q", got, want)
	}
	if want := `level=ERROR msg="hook panicked" hook=panicky-notifiee event=RunPodSandbox panic=boom`; !strings.Contains(logs.String(), want) {
		t.Errorf("logs lack %s:\n%s", want, logs.String())
	}
}

// recordingHook records the notifications it gets.
type recordingHook struct {
	nilHook
	mu    sync.Mutex
	calls []string
}

func (r *recordingHook) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, s)
}

func (r *recordingHook) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func (r *recordingHook) Synchronize(_ context.Context, pods []*api.PodSandbox, ctrs []*api.Container) {
	var p, c []string
	for _, pod := range pods {
		p = append(p, pod.GetName())
	}
	for _, ctr := range ctrs {
		c = append(c, ctr.GetName())
	}
	r.add("Synchronize pods=" + strings.Join(p, ",") + " containers=" + strings.Join(c, ","))
}

func (r *recordingHook) RunPodSandbox(_ context.Context, pod *api.PodSandbox) {
	r.add("RunPodSandbox " + pod.GetName())
}

func (r *recordingHook) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) {
	r.add("RemovePodSandbox " + pod.GetName())
}

type panickyNotifiee struct{ nilHook }

func (panickyNotifiee) Name() string { return "panicky-notifiee" }

func (panickyNotifiee) RunPodSandbox(context.Context, *api.PodSandbox) { panic("boom") }

// TestPlugin_syncHeldOff: the runtime registers the plugin but holds off
// its synchronization (a container stop in progress, containerd#14083):
// the plugin is connected, says it is not synchronized (metric and a
// warning after SyncWarnAfter), and says how long it waited once the
// synchronization comes.
func TestPlugin_syncHeldOff(t *testing.T) {
	rt := nritest.New(t, t.TempDir())
	rt.Start()
	unblock := rt.BlockPluginSync()
	var logs lockedbuf.Buffer
	reg := prometheus.NewRegistry()
	p, err := New(Config{SocketPath: rt.Socket(), Logger: slog.New(slog.NewTextHandler(&logs, nil)), Registerer: reg,
		SyncWarnAfter: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	runnable.Start(t, 5*time.Second, p.Start)
	poll.Until(t, 10*time.Second, "Connected()", p.Connected)
	const warning = `level=WARN msg="the runtime has not synchronized this plugin yet;`
	poll.Until(t, 10*time.Second, "the warning", func() bool { return strings.Contains(logs.String(), warning) })
	if got := metricValue(t, reg, "berth_agent_nri_synchronized", ""); got != 0 {
		t.Errorf("berth_agent_nri_synchronized = %v while the sync is held off, want 0", got)
	}
	if got := metricValue(t, reg, "berth_agent_nri_connected", ""); got != 1 {
		t.Errorf("berth_agent_nri_connected = %v, want 1", got)
	}
	if n := strings.Count(logs.String(), warning); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, logs.String())
	}

	unblock()
	poll.Until(t, 10*time.Second, "berth_agent_nri_synchronized 1", func() bool {
		return metricValue(t, reg, "berth_agent_nri_synchronized", "") == 1
	})
	m := regexp.MustCompile(`msg="synchronized with runtime" pods=0 containers=0 waited_seconds=([0-9.]+)`).FindStringSubmatch(logs.String())
	if m == nil {
		t.Fatalf("no synchronized line with waited_seconds:\n%s", logs.String())
	}
	if waited, _ := strconv.ParseFloat(m[1], 64); waited < 0.2 {
		t.Errorf("waited_seconds=%s, want at least the 0.2 s the sync was held off", m[1])
	}
}
