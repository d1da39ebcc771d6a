package logdirs

import (
	"context"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/berth-io/berth/hooks/filelogs"
)

// TestManager_Pass_plantedAndOverLimit is what a hostile container does to
// its log directory between two passes: it plants a symlink to a file and
// one to a directory outside the root, a hard link to a file outside, a
// FIFO, a bound unix socket, a device node, a set-user-ID file, a
// set-group-ID directory and a file dated a year ahead, and writes past
// the size limit its pod asks for. One pass leaves nothing outside the
// root changed, none of the planted entries, no set-ID bit, no mtime in
// the future, and the container under its limit by its oldest files; the
// pod gets an Event for each, and the metrics count them. Needs root
// (mknod, and retention chowns the root's directories to root).
func TestManager_Pass_plantedAndOverLimit(t *testing.T) {
	const limit = 1 << 20
	e := newTestEnv(t, 48*time.Hour)
	now := time.Now()
	e.now.t = now
	outside := t.TempDir() // same file system as the root, for the hard link
	writeFile(t, filepath.Join(outside, "victim.txt"), "do not touch")
	writeFile(t, filepath.Join(outside, "dir", "keep.txt"), "do not touch either")
	writeFile(t, filepath.Join(outside, "hard.txt"), "hard-linked")
	outsideBefore := snapshot(t, outside)

	pod := testPod()
	pod.Annotations = map[string]string{filelogs.AnnotationSizeLimit: "1Mi"} // the node's default is 1Gi
	if _, err := e.m.CreateContainer(pod, testContainer("app", "KUBERNETES_FILELOGS=/app/logs")); err != nil {
		t.Fatal(err)
	}
	e.m.Synchronize(context.Background(), []*api.PodSandbox{pod}, nil)
	logs := filepath.Join(e.root, testPodDir, "app", "app-logs")

	// The planted entries.
	symlink(t, filepath.Join(outside, "victim.txt"), logs+"/link-to-file")
	symlink(t, filepath.Join(outside, "dir"), logs+"/link-to-dir")
	if err := os.Link(filepath.Join(outside, "hard.txt"), logs+"/hardlink"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(logs+"/fifo", 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(logs+"/null", unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatalf("mknod (the test needs root): %v", err)
	}
	plantSocket(t, logs+"/sock")
	writeFile(t, logs+"/setuid", "#!/bin/sh\n")
	if err := os.Chmod(logs+"/setuid", 0o755|fs.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	mkdir(t, logs+"/setgid-dir")
	if err := os.Chmod(logs+"/setgid-dir", 0o775|fs.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	// What the app writes: 1300 KiB in four files, over its 1 MiB.
	for _, f := range []struct {
		name  string
		kib   int
		mtime time.Time
	}{
		{"old1.log", 400, now.Add(-3 * time.Hour)},
		{"setgid-dir/old2.log", 400, now.Add(-2 * time.Hour)},
		{"new.log", 400, now.Add(-time.Hour)},
		{"future.log", 100, now.AddDate(1, 0, 0)},
	} {
		writeFile(t, filepath.Join(logs, f.name), strings.Repeat("x", f.kib<<10))
		setMtime(t, filepath.Join(logs, f.name), f.mtime)
	}
	setMtime(t, logs+"/setgid-dir", now.Add(-2*time.Hour))

	st := e.m.Pass(context.Background())
	if st.Errors != 0 {
		t.Fatalf("pass: %d errors, first %v", st.Errors, st.FirstError)
	}

	if after := snapshot(t, outside); !slices.Equal(after, outsideBefore) {
		t.Errorf("outside the root changed:\nbefore %q\nafter  %q", outsideBefore, after)
	}
	for _, p := range []string{"link-to-file", "link-to-dir", "hardlink", "fifo", "null", "sock", "old1.log"} {
		if exists(filepath.Join(logs, p)) {
			t.Errorf("%s kept", p)
		}
	}
	for _, p := range []string{"setuid", "setgid-dir", "setgid-dir/old2.log", "new.log", "future.log"} {
		if !exists(filepath.Join(logs, p)) {
			t.Errorf("%s removed", p)
		}
	}
	for _, p := range []string{"setuid", "setgid-dir"} {
		if fi, err := os.Lstat(filepath.Join(logs, p)); err == nil && fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
			t.Errorf("%s: mode %v, want no set-ID bit", p, fi.Mode())
		}
	}
	if fi, err := os.Lstat(logs + "/future.log"); err == nil && fi.ModTime().After(time.Now()) {
		t.Errorf("future.log: mtime %v, still in the future", fi.ModTime())
	}
	if used := diskUse(t, logs); used > limit {
		t.Errorf("log directory uses %d bytes after the pass, over the limit of %d", used, limit)
	}

	evs := e.rec.got()
	wantUnsafe := `Warning FileLogsUnsafeFiles Retention shop/web-0 container "app": its log directories held what host tools must not meet: ` +
		`removed 2 symlinks, 1 hard link, 1 device node, 1 FIFO, 1 socket (never allowed there, whatever their age); ` +
		`stripped the set-user-ID or set-group-ID bits of 2 entries; set 1 modification time from the future to now`
	if !slices.Contains(evs, wantUnsafe) {
		t.Errorf("events = %q\nwant among them %q", evs, wantUnsafe)
	}
	overLimit := regexp.MustCompile(`^Warning FileLogsOverLimit Retention shop/web-0 container "app": its log directories used \d+Ki, ` +
		`over its size limit of 1Mi \(berth.io/filelogs-size-limit, or the node's default\): emptied and removed its 1 oldest file, 40\dKi$`)
	if !slices.ContainsFunc(evs, overLimit.MatchString) {
		t.Errorf("events = %q\nwant one matching %s", evs, overLimit)
	}

	for kind, want := range map[string]float64{"symlink": 2, "hardlink": 1, "device": 1, "fifo": 1, "socket": 1, "setid": 2,
		"future_mtime": 1} {
		if got := gathered(t, e.reg, "berth_agent_filelogs_unsafe_entries_total", map[string]string{"kind": kind}); got != want {
			t.Errorf("unsafe_entries_total{kind=%q} = %v, want %v", kind, got, want)
		}
	}
	culprit := map[string]string{"namespace": "shop", "pod": "web-0", "uid": testUID, "container": "app"}
	if got := gathered(t, e.reg, "berth_agent_filelogs_over_limit_total", culprit); got != 1 {
		t.Errorf("over_limit_total = %v, want 1", got)
	}
	if got := gathered(t, e.reg, "berth_agent_filelogs_over_limit_removed_bytes_total", culprit); got < 400<<10 {
		t.Errorf("over_limit_removed_bytes_total = %v, want at least 400 KiB", got)
	}

	// The next pass finds nothing more to do: no new Event.
	if st := e.m.Pass(context.Background()); st.Errors != 0 {
		t.Fatalf("pass 2: %d errors, first %v", st.Errors, st.FirstError)
	}
	if got := e.rec.got(); len(got) != len(evs) {
		t.Errorf("pass 2 recorded %q", got[len(evs):])
	}
}

// TestManager_Pass_overLimitKeepsRecentFiles: a file written within the
// last interval may be held open by its writer; it is emptied, which
// frees its blocks, but kept, where the next pass still sees it grow.
func TestManager_Pass_overLimitKeepsRecentFiles(t *testing.T) {
	e := newTestEnv(t, 48*time.Hour)
	now := time.Now()
	e.now.t = now
	pod := testPod()
	pod.Annotations = map[string]string{filelogs.AnnotationSizeLimit: "256Ki"}
	if _, err := e.m.CreateContainer(pod, testContainer("app", "KUBERNETES_FILELOGS=/app/logs")); err != nil {
		t.Fatal(err)
	}
	logs := filepath.Join(e.root, testPodDir, "app", "app-logs")
	writeFile(t, logs+"/app.log", strings.Repeat("x", 512<<10))
	f, err := os.OpenFile(logs+"/app.log", os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	if st := e.m.Pass(context.Background()); st.Errors != 0 {
		t.Fatalf("pass: %d errors, first %v", st.Errors, st.FirstError)
	}
	fi, err := os.Lstat(logs + "/app.log")
	if err != nil {
		t.Fatalf("app.log, written just now, removed: %v", err)
	}
	if fi.Size() != 0 {
		t.Errorf("app.log has %d bytes, want it emptied", fi.Size())
	}
	// Its writer goes on; what it writes is seen where it writes.
	if _, err := f.WriteString("after\n"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(logs + "/app.log"); string(b) != "after\n" {
		t.Errorf("app.log = %q", b)
	}
	want := `; 1 file written to in the last 10m0s kept, empty, since the app may hold them open`
	if evs := e.rec.got(); len(evs) != 1 || !strings.HasSuffix(evs[0], want) {
		t.Errorf("events = %q, want one ending in %q", evs, want)
	}
}

// TestManager_Pass_private: the root and the pod directories are root's
// with mode 0750 at most, whoever made them and however: New fixes the
// root, CreateContainer its pod's directory, each pass every pod
// directory. Needs root.
func TestManager_Pass_private(t *testing.T) {
	root := filepath.Join(t.TempDir(), "logs")
	podDir := filepath.Join(root, testPodDir)
	otherDir := filepath.Join(root, goneDir)
	mkdir(t, podDir)
	mkdir(t, otherDir)
	for _, p := range []string{root, podDir, otherDir} {
		if err := os.Chmod(p, 0o777|fs.ModeSticky|fs.ModeSetgid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 1000, 1000); err != nil {
			t.Fatalf("chown (the test needs root): %v", err)
		}
	}
	checkPrivate := func(p string) {
		t.Helper()
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		sys := fi.Sys().(*syscall.Stat_t)
		if sys.Uid != 0 || fi.Mode() != fs.ModeDir|0o750 || sys.Gid != 1000 {
			t.Errorf("%s: %d:%d %v, want 0:1000 (its group stays) and %v", p, sys.Uid, sys.Gid, fi.Mode(), fs.ModeDir|0o750)
		}
	}
	m, err := New(Config{Root: root, Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	checkPrivate(root)
	if _, err := m.CreateContainer(testPod(), testContainer("app", "KUBERNETES_FILELOGS=/app/logs")); err != nil {
		t.Fatal(err)
	}
	checkPrivate(podDir)
	if st := m.Pass(context.Background()); st.Errors != 0 {
		t.Fatalf("pass: %d errors, first %v", st.Errors, st.FirstError)
	}
	checkPrivate(otherDir)
}

// plantSocket binds a unix socket and moves it to p (too long a path to
// bind at), as a container binding one in its log directory would leave.
func plantSocket(t *testing.T, p string) {
	t.Helper()
	dir, err := os.MkdirTemp(filepath.Dir(t.TempDir()), "s")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := os.Rename(filepath.Join(dir, "s"), p); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(p); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("planted socket: %v, %v", fi, err)
	}
}

// diskUse sums the allocated blocks of dir and everything below it.
func diskUse(t *testing.T, dir string) int64 {
	t.Helper()
	var used int64
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		used += fi.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return used
}

// gathered returns the value of the counter or gauge name with labels
// from reg, or -1 when there is no such series.
func gathered(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}
