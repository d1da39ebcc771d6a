package logdirs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/berth-io/berth/hooks/filelogs"
	"github.com/berth-io/berth/test/lockedbuf"
)

const (
	testUID    = "0b6c3c4e-1f2a-4b5c-9d8e-7f6a5b4c3d2e"
	testPodDir = "shop_web-0_" + testUID
)

func testPod() *api.PodSandbox {
	return &api.PodSandbox{Id: "sandbox-1", Name: "web-0", Namespace: "shop", Uid: testUID,
		Labels: map[string]string{"app": "web", "io.kubernetes.pod.uid": testUID}}
}

func testContainer(name string, env ...string) *api.Container {
	return &api.Container{Id: "ctr-" + name, PodSandboxId: "sandbox-1", Name: name, Env: env,
		State:  api.ContainerState_CONTAINER_RUNNING,
		Mounts: []*api.Mount{{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/kubelet/x"}}}
}

// testManager returns a Manager on a fresh root with a fake clock, event
// recorder, log buffer and metrics registry.
type testEnv struct {
	m    *Manager
	root string
	rec  *fakeRecorder
	logs *lockedbuf.Buffer
	reg  *prometheus.Registry
	now  *fakeClock
}

func newTestEnv(t *testing.T, retention time.Duration) *testEnv {
	t.Helper()
	e := &testEnv{
		root: filepath.Join(t.TempDir(), "logs"),
		rec:  &fakeRecorder{},
		logs: &lockedbuf.Buffer{},
		reg:  prometheus.NewRegistry(),
		now:  &fakeClock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)},
	}
	m, err := New(Config{
		Root: e.root, Retention: retention, Logger: slog.New(slog.NewTextHandler(e.logs, nil)),
		Registerer: e.reg, Recorder: e.rec, Now: e.now.Now,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.m = m
	return e
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "relative root", cfg: Config{Root: "logs"}, wantErr: `root "logs": want an absolute, clean path`},
		{name: "unclean root", cfg: Config{Root: "/logs/"}, wantErr: `root "/logs/": want an absolute, clean path`},
		{name: "negative retention", cfg: Config{Root: "/tmp", Retention: -time.Hour}, wantErr: "retention -1h0m0s: want > 0"},
		{name: "negative interval", cfg: Config{Root: "/tmp", Interval: -time.Second},
			wantErr: "retention interval -1s: want > 0"},
		{name: "negative size limit", cfg: Config{Root: "/tmp", SizeLimit: -1}, wantErr: "size limit -1: want > 0"},
		{name: "maximum below the default", cfg: Config{Root: "/tmp", SizeLimit: 2 << 30, MaxSizeLimit: 1 << 30},
			wantErr: "maximum size limit 1073741824: want at least the size limit, 2147483648"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if got := errString(err); got != tt.wantErr {
				t.Errorf("New err = %q, want %q", got, tt.wantErr)
			}
		})
	}
	root := filepath.Join(t.TempDir(), "a", "logs")
	m, err := New(Config{Root: root})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if m.cfg.Retention != DefaultRetention || m.cfg.Interval != DefaultInterval ||
		m.cfg.SizeLimit != DefaultSizeLimit || m.cfg.MaxSizeLimit != DefaultMaxSizeLimit {
		t.Errorf("defaults: retention %s, interval %s, size limit %d, maximum %d", m.cfg.Retention, m.cfg.Interval,
			m.cfg.SizeLimit, m.cfg.MaxSizeLimit)
	}
	// A default above DefaultMaxSizeLimit raises the maximum with it.
	if m, err := New(Config{Root: root, SizeLimit: 20 << 30}); err != nil {
		t.Errorf("New with a 20Gi default: %v", err)
	} else if m.cfg.MaxSizeLimit != 20<<30 {
		t.Errorf("New with a 20Gi default: maximum %d, want 20Gi", m.cfg.MaxSizeLimit)
	}
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		t.Errorf("root not made: %v", err)
	}
}

func TestManager_CreateContainer(t *testing.T) {
	e := newTestEnv(t, time.Hour)
	pod := testPod()
	ctr := testContainer("app", "KUBERNETES_FILELOGS=/app/logs,/app/audit")
	adj, err := e.m.CreateContainer(pod, ctr)
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	ctrDir := filepath.Join(e.root, testPodDir, "app")
	var got []string
	for _, m := range adj.GetMounts() {
		got = append(got, m.Destination+"="+m.Source+" "+m.Type+" "+strings.Join(m.Options, ","))
	}
	want := []string{
		"/app/logs=" + ctrDir + "/app-logs bind bind,rprivate,rw,nosuid,nodev",
		"/app/audit=" + ctrDir + "/app-audit bind bind,rprivate,rw,nosuid,nodev",
	}
	if !slices.Equal(got, want) {
		t.Errorf("mounts = %q\nwant %q", got, want)
	}
	for p, mode := range map[string]fs.FileMode{
		filepath.Join(e.root, testPodDir): 0o750,
		e.root:                            0o750,
		ctrDir:                            0o755,
		ctrDir + "/app-logs":              0o777,
		ctrDir + "/app-audit":             0o777,
	} {
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !st.IsDir() || st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want a directory with %v", p, st.Mode(), mode)
		}
	}
	b, err := os.ReadFile(filepath.Join(ctrDir, filelogs.MetadataFile))
	if err != nil {
		t.Fatal(err)
	}
	var md filelogs.Metadata
	if err := json.Unmarshal(b, &md); err != nil {
		t.Fatalf("metadata %s: %v", b, err)
	}
	if md.Namespace != "shop" || md.Pod != "web-0" || md.UID != testUID || md.Container != "app" ||
		len(md.Paths) != 2 || md.Paths[1] != (filelogs.Dir{Path: "/app/audit", Name: "app-audit"}) ||
		fmt.Sprint(md.Labels) != "map[app:web]" {
		t.Errorf("metadata = %+v", md)
	}

	// A restarted container (same pod, same name) gets the same directory;
	// what is in it stays.
	if err := os.WriteFile(ctrDir+"/app-logs/app.log", []byte("one\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	adj2, err := e.m.CreateContainer(pod, ctr)
	if err != nil {
		t.Fatalf("CreateContainer again: %v", err)
	}
	if adj2.GetMounts()[0].Source != adj.GetMounts()[0].Source {
		t.Errorf("restart got %s, want %s", adj2.GetMounts()[0].Source, adj.GetMounts()[0].Source)
	}
	if b, _ := os.ReadFile(ctrDir + "/app-logs/app.log"); string(b) != "one\n" {
		t.Errorf("app.log after restart = %q", b)
	}
	if got := value(t, e.m.metrics.containers.WithLabelValues(resultMounted)); got != 2 {
		t.Errorf("containers_total{result=mounted} = %v, want 2", got)
	}

	// No variable: no adjustment, nothing made.
	adj3, err := e.m.CreateContainer(pod, testContainer("sidecar", "PATH=/bin"))
	if adj3 != nil || err != nil {
		t.Errorf("CreateContainer without the variable = %v, %v", adj3, err)
	}
	if _, err := os.Lstat(filepath.Join(e.root, testPodDir, "sidecar")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("sidecar directory: %v, want none", err)
	}
	if len(e.rec.got()) != 0 {
		t.Errorf("events = %q, want none", e.rec.got())
	}
}

func TestManager_CreateContainer_user(t *testing.T) {
	e := newTestEnv(t, time.Hour)
	ctr := testContainer("app", "KUBERNETES_FILELOGS=/app/logs")
	ctr.User = &api.User{Uid: 1000, Gid: 2000}
	if _, err := e.m.CreateContainer(testPod(), ctr); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	st, err := os.Lstat(filepath.Join(e.root, testPodDir, "app", "app-logs"))
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if sys.Uid != 1000 || sys.Gid != 2000 || st.Mode().Perm() != 0o755 {
		t.Errorf("log dir owner %d:%d mode %v, want 1000:2000 0755", sys.Uid, sys.Gid, st.Mode().Perm())
	}
}

func TestManager_CreateContainer_errors(t *testing.T) {
	tests := []struct {
		name      string
		plant     func(t *testing.T, root, outside string) // before CreateContainer
		ann       map[string]string                        // the pod's annotations
		env       string
		wantErr   string
		wantEvent string
	}{
		{
			name: "relative path", env: "KUBERNETES_FILELOGS=logs",
			wantErr:   `KUBERNETES_FILELOGS="logs": path "logs" is relative: want an absolute path (starting with "/")`,
			wantEvent: `Warning FileLogsRejected CreateContainer shop/web-0 container "app": KUBERNETES_FILELOGS="logs": path "logs" is relative: want an absolute path (starting with "/")`,
		},
		{
			name: "collision", env: "KUBERNETES_FILELOGS=/etc",
			wantErr:   `KUBERNETES_FILELOGS="/etc": path "/etc" would hide the container's mount at "/etc/hosts"`,
			wantEvent: `Warning FileLogsRejected CreateContainer shop/web-0 container "app": KUBERNETES_FILELOGS="/etc": path "/etc" would hide the container's mount at "/etc/hosts"`,
		},
		{
			name: "size limit above the maximum", env: "KUBERNETES_FILELOGS=/app/logs",
			ann:       map[string]string{filelogs.AnnotationSizeLimit: "11Gi"},
			wantErr:   `annotation berth.io/filelogs-size-limit="11Gi": above this node's maximum of 10Gi (berth-agent --filelogs-max-size-limit): want at most 10Gi`,
			wantEvent: `Warning FileLogsRejected CreateContainer shop/web-0 container "app": annotation berth.io/filelogs-size-limit="11Gi": above this node's maximum of 10Gi (berth-agent --filelogs-max-size-limit): want at most 10Gi`,
		},
		{
			name: "size limit not a quantity", env: "KUBERNETES_FILELOGS=/app/logs",
			ann:       map[string]string{filelogs.AnnotationSizeLimit: "1GB"},
			wantErr:   `annotation berth.io/filelogs-size-limit="1GB": not a Kubernetes quantity: want bytes with an optional suffix, e.g. "500Mi" or "2Gi"`,
			wantEvent: `Warning FileLogsRejected CreateContainer shop/web-0 container "app": annotation berth.io/filelogs-size-limit="1GB": not a Kubernetes quantity: want bytes with an optional suffix, e.g. "500Mi" or "2Gi"`,
		},
		{
			name: "pod directory is a symlink",
			plant: func(t *testing.T, root, outside string) {
				symlink(t, outside, filepath.Join(root, testPodDir))
			},
			env:       "KUBERNETES_FILELOGS=/app/logs",
			wantErr:   `KUBERNETES_FILELOGS="/app/logs": cannot make the host directories: open ROOT/` + testPodDir + `: is a symbolic link`,
			wantEvent: `Warning FileLogsFailed CreateContainer shop/web-0 container "app": KUBERNETES_FILELOGS="/app/logs": cannot make the host directories: open ROOT/` + testPodDir + `: is a symbolic link`,
		},
		{
			name: "log directory is a symlink",
			plant: func(t *testing.T, root, outside string) {
				mkdir(t, filepath.Join(root, testPodDir, "app"))
				symlink(t, outside, filepath.Join(root, testPodDir, "app", "app-logs"))
			},
			env:       "KUBERNETES_FILELOGS=/app/logs",
			wantErr:   `KUBERNETES_FILELOGS="/app/logs": cannot make the host directories: open ROOT/` + testPodDir + `/app/app-logs: is a symbolic link`,
			wantEvent: `Warning FileLogsFailed CreateContainer shop/web-0 container "app": KUBERNETES_FILELOGS="/app/logs": cannot make the host directories: open ROOT/` + testPodDir + `/app/app-logs: is a symbolic link`,
		},
		{
			name: "metadata file is a symlink",
			plant: func(t *testing.T, root, outside string) {
				mkdir(t, filepath.Join(root, testPodDir, "app"))
				symlink(t, filepath.Join(outside, "victim"), filepath.Join(root, testPodDir, "app", filelogs.MetadataFile+".tmp"))
			},
			env:       "KUBERNETES_FILELOGS=/app/logs",
			wantErr:   `KUBERNETES_FILELOGS="/app/logs": cannot make the host directories: write ROOT/` + testPodDir + `/app/.berth-filelogs.json.tmp: too many levels of symbolic links`,
			wantEvent: `Warning FileLogsFailed CreateContainer shop/web-0 container "app": KUBERNETES_FILELOGS="/app/logs": cannot make the host directories: write ROOT/` + testPodDir + `/app/.berth-filelogs.json.tmp: too many levels of symbolic links`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t, time.Hour)
			outside := t.TempDir()
			writeFile(t, filepath.Join(outside, "victim"), "keep")
			if tt.plant != nil {
				tt.plant(t, e.root, outside)
			}
			ctr := testContainer("app", tt.env)
			pod := testPod()
			pod.Annotations = tt.ann
			// kubelet retries: one log line and one Event however often.
			for range 3 {
				adj, err := e.m.CreateContainer(pod, ctr)
				if got := strings.ReplaceAll(errString(err), e.root, "ROOT"); got != tt.wantErr {
					t.Fatalf("err = %q\nwant %q", got, tt.wantErr)
				}
				if adj != nil {
					t.Errorf("adjustment %v with an error", adj)
				}
			}
			evs := e.rec.got()
			if len(evs) != 1 || strings.ReplaceAll(evs[0], e.root, "ROOT") != tt.wantEvent {
				t.Errorf("events = %q\nwant [%q]", evs, tt.wantEvent)
			}
			if n := strings.Count(e.logs.String(), "level=WARN msg=\"file logs"); n != 1 {
				t.Errorf("%d warnings logged, want 1:\n%s", n, e.logs.String())
			}
			entries, _ := os.ReadDir(outside)
			if b, _ := os.ReadFile(filepath.Join(outside, "victim")); len(entries) != 1 || string(b) != "keep" {
				t.Errorf("outside the root changed: %d entries, victim %q", len(entries), b)
			}
		})
	}
}

func TestManager_reportOnce_forgetsGonePods(t *testing.T) {
	e := newTestEnv(t, time.Hour)
	ctr := testContainer("app", "KUBERNETES_FILELOGS=logs")
	if _, err := e.m.CreateContainer(testPod(), ctr); err == nil {
		t.Fatal("no error")
	}
	e.m.RemovePodSandbox(context.Background(), testPod())
	// A new pod with the same name is another pod (another UID): reported again.
	pod2 := testPod()
	pod2.Uid, pod2.Id = "uid-2", "sandbox-2"
	if _, err := e.m.CreateContainer(pod2, ctr); err == nil {
		t.Fatal("no error")
	}
	if n := len(e.rec.got()); n != 2 {
		t.Errorf("%d events, want 2: %q", n, e.rec.got())
	}
}

func TestManager_Synchronize(t *testing.T) {
	e := newTestEnv(t, time.Hour)
	pod := testPod()
	mounted := testContainer("mounted", "KUBERNETES_FILELOGS=/app/logs")
	adj, err := e.m.CreateContainer(pod, mounted)
	if err != nil {
		t.Fatal(err)
	}
	mounted.Mounts = append(mounted.Mounts, adj.GetMounts()...)
	unmounted := testContainer("late", "KUBERNETES_FILELOGS=/app/logs")
	bad := testContainer("bad", "KUBERNETES_FILELOGS=/proc/logs")
	stopped := testContainer("stopped", "KUBERNETES_FILELOGS=/app/logs")
	stopped.State = api.ContainerState_CONTAINER_STOPPED
	plain := testContainer("plain")

	e.m.Synchronize(context.Background(), []*api.PodSandbox{pod}, []*api.Container{mounted, unmounted, bad, stopped, plain})
	want := []string{
		`Warning FileLogsNotMounted Synchronize shop/web-0 container "late" asks for file logs (KUBERNETES_FILELOGS="/app/logs") but runs without a host directory at /app/logs: it was created while berth-agent was not connected to the runtime; delete the pod to get them`,
		`Warning FileLogsNotMounted Synchronize shop/web-0 container "bad" runs without file logs: KUBERNETES_FILELOGS="/proc/logs": path "/proc/logs" is under /proc: /proc, /sys and /dev belong to the runtime; it was created while berth-agent was not connected to the runtime`,
	}
	if got := e.rec.got(); !slices.Equal(got, want) {
		t.Errorf("events =\n%q\nwant\n%q", got, want)
	}
	if got := value(t, e.m.metrics.unmounted); got != 2 {
		t.Errorf("unmounted_containers = %v, want 2", got)
	}
	// A reconnect after the pod was recreated properly: the gauge follows.
	e.m.Synchronize(context.Background(), []*api.PodSandbox{pod}, []*api.Container{mounted})
	if got := value(t, e.m.metrics.unmounted); got != 0 {
		t.Errorf("unmounted_containers = %v, want 0", got)
	}
}

func TestManager_RemovePodSandbox(t *testing.T) {
	e := newTestEnv(t, time.Hour)
	pod := testPod()
	if _, err := e.m.CreateContainer(pod, testContainer("app", "KUBERNETES_FILELOGS=/app/logs")); err != nil {
		t.Fatal(err)
	}
	e.m.Synchronize(context.Background(), []*api.PodSandbox{pod}, nil)
	// A second sandbox of the same pod (kubelet recreated it): removing the
	// first does not make the pod gone.
	pod2 := testPod()
	pod2.Id = "sandbox-2"
	e.m.RunPodSandbox(context.Background(), pod2)
	e.m.RemovePodSandbox(context.Background(), pod)
	gone := filepath.Join(e.root, testPodDir, filelogs.GoneFile)
	if _, err := os.Lstat(gone); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("gone file after the first sandbox: %v", err)
	}
	e.m.RemovePodSandbox(context.Background(), pod2)
	if b, err := os.ReadFile(gone); err != nil || string(b) != "2026-05-01T12:00:00Z\n" {
		t.Fatalf("gone file = %q, %v", b, err)
	}
	// A pod that never had a directory: nothing made.
	other := &api.PodSandbox{Id: "s9", Name: "other", Namespace: "shop", Uid: "uid-9"}
	e.m.RunPodSandbox(context.Background(), other)
	e.m.RemovePodSandbox(context.Background(), other)
	if entries, _ := os.ReadDir(e.root); len(entries) != 1 {
		t.Errorf("root has %d entries, want 1", len(entries))
	}
	// The pod comes back (same UID): CreateContainer clears the mark.
	if _, err := e.m.CreateContainer(pod, testContainer("app", "KUBERNETES_FILELOGS=/app/logs")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(gone); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("gone file after CreateContainer: %v", err)
	}
}

func TestTruncate(t *testing.T) {
	tests := []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"0123456789abc", 10, "0123456..."},
		{"ééééé", 8, "éé..."}, // 2-byte runes are not split
	}
	for _, tt := range tests {
		if got := truncate(tt.s, tt.n); got != tt.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", tt.s, tt.n, got, tt.want)
		}
	}
}

// fakeRecorder records Events as "type reason action namespace/name note".
type fakeRecorder struct {
	mu  sync.Mutex
	evs []string
}

func (r *fakeRecorder) Eventf(regarding, _ runtime.Object, eventtype, reason, action, note string, args ...any) {
	obj, err := meta.Accessor(regarding)
	if err != nil {
		panic(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, fmt.Sprintf("%s %s %s %s/%s %s", eventtype, reason, action, obj.GetNamespace(), obj.GetName(),
		fmt.Sprintf(note, args...)))
}

func (r *fakeRecorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.evs)
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func mkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, p string) {
	t.Helper()
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	mkdir(t, filepath.Dir(p))
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// value returns the value of a gauge or counter.
func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.GetCounter() != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}
