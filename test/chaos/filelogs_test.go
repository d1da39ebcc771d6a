package chaos

import (
	"context"
	"crypto/sha256"
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
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/berth-io/berth/agent/logdirs"
	"github.com/berth-io/berth/hooks/filelogs"
)

// TestFileLogs_hostileContainer_fakeRecorder is the fault-suite case of issue 22 for
// file logs: while retention runs (a pass every 50 ms), a container
// writes far past its size limit and, through its own bind mount of its
// log directory (nosuid,nodev, as the runtime mounts it), keeps planting
// symlinks out of the root, hard links, FIFOs, sockets, device nodes,
// set-user-ID files, files dated a year ahead, and a symlink it swaps back
// and forth with a set-user-ID file to make retention chmod what the link
// points to. When it stops, one more pass runs. Nothing outside its
// directory changed (a bystander pod's logs included), nothing it planted
// is left, it is under its limit, its pod has both Events, and a new pod
// still gets its file logs. Bounded: 2 s of attack, one pass after. Needs
// root (bind mounts, mknod). The Events go to a fake recorder
// (agent/filelogs_test.go shows the agent's Events reaching an API server).
func TestFileLogs_hostileContainer_fakeRecorder(t *testing.T) {
	const (
		limit  = 1 << 20
		attack = 2 * time.Second
	)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := filepath.Join(t.TempDir(), "logs")
	rec := &recorder{}
	reg := prometheus.NewRegistry()
	m, err := logdirs.New(logdirs.Config{
		Root: root, Interval: 50 * time.Millisecond, Registerer: reg, Recorder: rec,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}

	// Outside the root, on the same file system: what the container would
	// like retention to follow, chmod or remove.
	outside := t.TempDir()
	write(t, filepath.Join(outside, "victim"), "do not touch", 0o4755)
	write(t, filepath.Join(outside, "dir", "old.log"), "old, not Berth's", 0o644)
	old := time.Now().Add(-365 * 24 * time.Hour)
	for _, p := range []string{"victim", "dir/old.log", "dir"} {
		if err := os.Chtimes(filepath.Join(outside, p), old, old); err != nil {
			t.Fatal(err)
		}
	}

	hostile := pod("hostile-0", "uid-hostile")
	hostile.Annotations = map[string]string{filelogs.AnnotationSizeLimit: "1Mi"} // the node's default is 1Gi
	bystander := pod("calm-0", "uid-calm")
	view := mountLogs(ctx, t, m, hostile, filepath.Join(t.TempDir(), "view"))
	mountLogs(ctx, t, m, bystander, "")
	m.Synchronize(ctx, []*api.PodSandbox{hostile, bystander}, nil)
	calmLogs := filepath.Join(root, filelogs.PodDirName("shop", "calm-0", "uid-calm"), "app", "app-logs")
	write(t, filepath.Join(calmLogs, "calm.log"), "a quiet app\n", 0o644)
	outsideBefore, calmBefore := snapshot(t, outside), snapshot(t, calmLogs)

	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = m.Start(runCtx) })
	written := plant(t, view, outside, attack)
	stop()
	wg.Wait()
	st := m.Pass(ctx)
	logs := filepath.Join(root, filelogs.PodDirName("shop", "hostile-0", "uid-hostile"), "app", "app-logs")

	if after := snapshot(t, outside); !slices.Equal(after, outsideBefore) {
		t.Errorf("outside the root changed:\nbefore %q\nafter  %q", outsideBefore, after)
	}
	if after := snapshot(t, calmLogs); !slices.Equal(after, calmBefore) {
		t.Errorf("the bystander's logs changed:\nbefore %q\nafter  %q", calmBefore, after)
	}
	var used int64
	err = filepath.WalkDir(logs, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sys := fi.Sys().(*syscall.Stat_t)
		used += sys.Blocks * 512
		switch {
		case !fi.Mode().IsRegular() && !fi.IsDir():
			t.Errorf("%s left: %v", p, fi.Mode())
		case fi.Mode().IsRegular() && sys.Nlink > 1:
			t.Errorf("%s left with %d links", p, sys.Nlink)
		case fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0:
			t.Errorf("%s left with %v", p, fi.Mode())
		case fi.ModTime().After(time.Now().Add(time.Minute)):
			t.Errorf("%s left with an mtime in the future, %v", p, fi.ModTime())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if used > limit {
		t.Errorf("the container uses %d bytes after the last pass, over its limit of %d (it wrote %d)", used, limit, written)
	}
	if written < 4*limit {
		t.Errorf("the container wrote only %d bytes in %s: the attack did not test the limit", written, attack)
	}
	if st.Errors != 0 {
		t.Errorf("last pass: %d errors, first %v", st.Errors, st.FirstError)
	}
	evs := rec.got()
	for _, reason := range []string{"FileLogsUnsafeFiles", "FileLogsOverLimit"} {
		if !slices.ContainsFunc(evs, func(e string) bool { return strings.HasPrefix(e, reason+" shop/hostile-0 ") }) {
			t.Errorf("no %s Event on the hostile pod; events %q", reason, evs)
		}
	}
	if slices.ContainsFunc(evs, func(e string) bool { return strings.Contains(e, "calm-0") }) {
		t.Errorf("Events on the bystander: %q", evs)
	}

	// Other pods keep starting.
	if _, err := m.CreateContainer(pod("next-0", "uid-next"), container()); err != nil {
		t.Errorf("a new pod's file logs: %v", err)
	}
}

// plant is the hostile container: for d it writes through view (its bind
// mount of its log directory) and plants what retention must remove. It
// returns the bytes it wrote.
func plant(t *testing.T, view, outside string, d time.Duration) int64 {
	t.Helper()
	chunk := []byte(strings.Repeat("x", 64<<10))
	start := time.Now()
	future := start.AddDate(1, 0, 0)
	var written int64
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	for i := 0; ; i++ {
		if i%4 == 0 { // a new file every 256 KiB, as a rotating logger
			if f != nil {
				f.Close()
			}
			var err error
			if f, err = os.OpenFile(filepath.Join(view, fmt.Sprintf("app-%d.log", i)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
				t.Fatalf("the container cannot write its logs: %v", err)
			}
		}
		if n, err := f.Write(chunk); err == nil {
			written += int64(n)
		}
		p := func(name string) string { return filepath.Join(view, fmt.Sprintf("%s-%d", name, i)) }
		// Errors are the attack's: retention may remove a name between two steps.
		_ = os.Symlink(filepath.Join(outside, "victim"), p("link"))
		_ = os.Symlink(filepath.Join(outside, "dir"), p("dirlink"))
		_ = os.Symlink("../../../../../../../../..", p("uplink"))
		_ = os.WriteFile(p("orig"), []byte("x"), 0o644)
		_ = os.Link(p("orig"), p("hard"))
		_ = unix.Mkfifo(p("fifo"), 0o644)
		_ = unix.Mknod(p("sock"), unix.S_IFSOCK|0o644, 0)
		_ = unix.Mknod(p("mem"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 1)))
		_ = os.WriteFile(p("suid"), []byte("#!/bin/sh\n"), 0o755)
		_ = os.Chmod(p("suid"), 0o755|fs.ModeSetuid)
		_ = os.WriteFile(p("future"), chunk[:4096], 0o644)
		_ = os.Chtimes(p("future"), future, future)
		// The swap: a set-user-ID file, then a symlink to the set-user-ID
		// victim renamed over it, again and again.
		_ = os.WriteFile(filepath.Join(view, "swap.tmp"), []byte("x"), 0o755)
		_ = os.Chmod(filepath.Join(view, "swap.tmp"), 0o755|fs.ModeSetuid)
		_ = os.Rename(filepath.Join(view, "swap.tmp"), filepath.Join(view, "swap"))
		_ = os.Symlink(filepath.Join(outside, "victim"), filepath.Join(view, "swap.lnk"))
		_ = os.Rename(filepath.Join(view, "swap.lnk"), filepath.Join(view, "swap"))
		if time.Since(start) > d {
			return written
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mountLogs creates ctr (KUBERNETES_FILELOGS=/app/logs) in pod and, with
// view set, bind-mounts its log directory there with the runtime's
// options, as the container sees it.
func mountLogs(ctx context.Context, t *testing.T, m *logdirs.Manager, pod *api.PodSandbox, view string) string {
	t.Helper()
	adj, err := m.CreateContainer(pod, container())
	if err != nil {
		t.Fatal(err)
	}
	m.RunPodSandbox(ctx, pod)
	if view == "" {
		return ""
	}
	src := adj.GetMounts()[0].Source
	if err := os.MkdirAll(view, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(src, view, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount (the test needs root): %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(view, unix.MNT_DETACH) })
	if err := unix.Mount("", view, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		t.Fatalf("remount nosuid,nodev: %v", err)
	}
	return view
}

func pod(name, uid string) *api.PodSandbox {
	return &api.PodSandbox{Id: "sandbox-" + name, Name: name, Namespace: "shop", Uid: uid}
}

func container() *api.Container {
	return &api.Container{Id: "ctr-app", Name: "app", Env: []string{"KUBERNETES_FILELOGS=/app/logs"},
		State: api.ContainerState_CONTAINER_RUNNING}
}

func write(t *testing.T, p, content string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode.Perm()|modeBits(mode)); err != nil {
		t.Fatal(err)
	}
}

// modeBits turns unix set-ID bits in mode (0o4000, 0o2000) into fs's.
func modeBits(mode fs.FileMode) fs.FileMode {
	var m fs.FileMode
	if mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	return m
}

// snapshot describes every entry below dir (mode, size, mtime, content
// hash, link target), to show that nothing there changed.
func snapshot(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v %d %d", strings.TrimPrefix(p, dir), fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			line += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// recorder records Events as "reason namespace/name note". A fake: no
// API server is needed to see what the agent would record.
type recorder struct {
	mu  sync.Mutex
	evs []string
}

func (r *recorder) Eventf(regarding, _ runtime.Object, _, reason, _, note string, args ...any) {
	obj, err := meta.Accessor(regarding)
	if err != nil {
		panic(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, fmt.Sprintf("%s %s/%s %s", reason, obj.GetNamespace(), obj.GetName(), fmt.Sprintf(note, args...)))
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.evs)
}
