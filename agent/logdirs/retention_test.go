package logdirs

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"golang.org/x/sys/unix"

	"github.com/berth-io/berth/hooks/filelogs"
)

const (
	goneUID = "9a8b7c6d-0000-4000-8000-000000000002"
	goneDir = "shop_gone-0_" + goneUID
)

// setMtime sets the mtime (and atime) of p, not following a symlink.
func setMtime(t *testing.T, p string, tm time.Time) {
	t.Helper()
	ts := unix.NsecToTimespec(tm.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatalf("utimes %s: %v", p, err)
	}
}

// snapshot describes every entry below dir (type, size, mtime, content
// hash, link target), to show that nothing there changed.
func snapshot(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v %d %d", strings.TrimPrefix(p, dir), st.Mode(), st.Size(), st.ModTime().UnixNano())
		switch {
		case st.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case st.Mode().IsRegular():
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

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// plantOutside makes, outside the root, the files a container would like
// Berth to remove or follow: a file, a directory with an old file, and a
// file to hard-link.
func plantOutside(t *testing.T, outside string, old time.Time) {
	t.Helper()
	writeFile(t, filepath.Join(outside, "victim.txt"), "do not touch")
	writeFile(t, filepath.Join(outside, "dir", "old.txt"), "old but not Berth's")
	writeFile(t, filepath.Join(outside, "hard.txt"), "hard-linked")
	for _, p := range []string{"victim.txt", "dir/old.txt", "hard.txt", "dir"} {
		setMtime(t, filepath.Join(outside, p), old)
	}
}

func TestManager_Pass(t *testing.T) {
	const retention = 48 * time.Hour
	e := newTestEnv(t, retention)
	now := time.Now().Truncate(time.Second)
	e.now.t = now
	old, fresh := now.Add(-retention-time.Hour), now.Add(-time.Hour)
	outside := filepath.Join(filepath.Dir(e.root), "outside") // same file system, for the hard link
	plantOutside(t, outside, old)

	// The live pod: made by CreateContainer, then filled by "the container".
	live, gone := testPod(), &api.PodSandbox{Id: "sandbox-2", Name: "gone-0", Namespace: "shop", Uid: goneUID}
	for _, pod := range []*api.PodSandbox{live, gone} {
		if _, err := e.m.CreateContainer(pod, testContainer("app", "KUBERNETES_FILELOGS=/app/logs")); err != nil {
			t.Fatal(err)
		}
	}
	e.m.Synchronize(context.Background(), []*api.PodSandbox{live}, nil) // gone-0 went while the agent was down
	logs := filepath.Join(e.root, testPodDir, "app", "app-logs")
	writeFile(t, logs+"/old.log", "old")
	writeFile(t, logs+"/new.log", "new")
	writeFile(t, logs+"/olddir/old.log", "old")
	writeFile(t, logs+"/newdir/old.log", "old")
	writeFile(t, logs+"/olddir-newfile/new.log", "new")
	symlink(t, filepath.Join(outside, "victim.txt"), logs+"/link-to-file")
	symlink(t, filepath.Join(outside, "dir"), logs+"/link-to-dir")
	symlink(t, "../../../"+goneDir+"/app/app-logs/new.log", logs+"/link-to-other-pod")
	symlink(t, filepath.Join(outside, "dir"), logs+"/fresh-link-to-dir")
	if err := os.Link(filepath.Join(outside, "hard.txt"), logs+"/hardlink"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"old.log", "olddir/old.log", "olddir", "newdir/old.log", "olddir-newfile",
		"link-to-file", "link-to-dir", "link-to-other-pod"} {
		setMtime(t, filepath.Join(logs, p), old)
	}
	for _, p := range []string{"new.log", "olddir-newfile/new.log", "fresh-link-to-dir"} {
		setMtime(t, filepath.Join(logs, p), fresh)
	}
	// Berth's own files are old too but stay while the pod does.
	for _, p := range []string{logs, filepath.Dir(logs), filepath.Join(filepath.Dir(logs), filelogs.MetadataFile)} {
		setMtime(t, p, old)
	}
	// A symlinked container directory and log directory in the live pod.
	symlink(t, filepath.Join(outside, "dir"), filepath.Join(e.root, testPodDir, "evil-ctr"))
	symlink(t, filepath.Join(outside, "dir"), filepath.Join(e.root, testPodDir, "app", "evil-logs"))

	goneLogs := filepath.Join(e.root, goneDir, "app", "app-logs")
	writeFile(t, goneLogs+"/new.log", "new in the gone pod")
	symlink(t, filepath.Join(outside, "dir"), goneLogs+"/link-to-dir")
	symlink(t, filepath.Join(outside, "victim.txt"), goneLogs+"/link-to-file")
	if err := os.Link(filepath.Join(outside, "hard.txt"), goneLogs+"/hardlink"); err != nil {
		t.Fatal(err)
	}
	// Entries of the root Berth did not make: a directory, and a symlink
	// named like a pod directory.
	writeFile(t, filepath.Join(e.root, "app", "old.log"), "the old kubelet fork's layout")
	setMtime(t, filepath.Join(e.root, "app", "old.log"), old)
	symlink(t, filepath.Join(outside, "dir"), filepath.Join(e.root, "shop_sym-0_uid-3"))
	// Left over by an interrupted removal.
	writeFile(t, filepath.Join(e.root, filelogs.TrashPrefix+"uid-4", "app", "x"), "x")

	outsideBefore := snapshot(t, outside)
	foreignBefore := snapshot(t, filepath.Join(e.root, "app"))

	// Pass 1: old entries of the live pod go; the gone pod is marked.
	st := e.m.Pass(context.Background())
	if st.Errors != 0 {
		t.Fatalf("pass 1: %d errors, first %v", st.Errors, st.FirstError)
	}
	for p, want := range map[string]bool{
		"old.log": false, "new.log": true, "olddir": false, "newdir": true, "newdir/old.log": false,
		"olddir-newfile/new.log": true, "link-to-file": false, "link-to-dir": false, "link-to-other-pod": false,
		"fresh-link-to-dir": false, // a symlink goes whatever its age

	} {
		if got := exists(filepath.Join(logs, p)); got != want {
			t.Errorf("pass 1: %s exists = %v, want %v", p, got, want)
		}
	}
	// A hard link goes whatever its age.
	if exists(logs + "/hardlink") {
		t.Error("pass 1: hard link kept")
	}
	for _, p := range []string{logs, filepath.Dir(logs), filepath.Join(filepath.Dir(logs), filelogs.MetadataFile),
		filepath.Join(e.root, testPodDir, "evil-ctr"), filepath.Join(e.root, testPodDir, "app", "evil-logs")} {
		if !exists(p) {
			t.Errorf("pass 1: %s removed", p)
		}
	}
	if b, err := os.ReadFile(filepath.Join(e.root, goneDir, filelogs.GoneFile)); err != nil ||
		string(b) != now.UTC().Format(time.RFC3339Nano)+"\n" {
		t.Errorf("gone pod's mark = %q, %v", b, err)
	}
	if exists(filepath.Join(e.root, filelogs.TrashPrefix+"uid-4")) {
		t.Error("left-over trash not removed")
	}
	// 4 old files and directories in the live pod; the links of both pods
	// as unsafe entries.
	if st.Pods != 2 || st.RemovedFiles != 4 || st.RemovedPods != 0 ||
		!maps.Equal(st.Unsafe, map[string]int{kindSymlink: 6, kindHardlink: 2}) {
		t.Errorf("pass 1 stats = %+v, want 2 pods, 4 removed files, 6 symlinks and 2 hard links, 0 pods", st)
	}
	if got := value(t, e.m.metrics.podBytes.WithLabelValues("shop", "web-0", testUID)); got <= 0 {
		t.Errorf("pod_bytes{web-0} = %v, want > 0", got)
	}

	// Pass 2, a retention later: the gone pod's directory goes, with its
	// links; the live pod stays.
	e.now.Add(retention)
	writeFile(t, logs+"/new.log", "still written") // the live app keeps writing
	st = e.m.Pass(context.Background())
	if st.Errors != 0 || st.RemovedPods != 1 {
		t.Fatalf("pass 2 = %+v, want 1 pod removed and no errors", st)
	}
	if exists(filepath.Join(e.root, goneDir)) {
		t.Error("gone pod's directory kept")
	}
	if !exists(logs + "/new.log") {
		t.Error("live pod's new.log removed")
	}
	if got := value(t, e.m.metrics.removedPods); got != 1 {
		t.Errorf("removed_pods_total = %v, want 1", got)
	}
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "berth_agent_filelogs_pod_bytes" && len(mf.GetMetric()) != 1 {
			t.Errorf("pod_bytes has %d series, want 1 (the gone pod's is deleted)", len(mf.GetMetric()))
		}
	}

	// Nothing outside the root, nor the root's foreign entries, changed.
	if after := snapshot(t, outside); !slices.Equal(after, outsideBefore) {
		t.Errorf("outside the root changed:\nbefore %q\nafter  %q", outsideBefore, after)
	}
	if after := snapshot(t, filepath.Join(e.root, "app")); !slices.Equal(after, foreignBefore) {
		t.Errorf("foreign directory changed:\nbefore %q\nafter  %q", foreignBefore, after)
	}
	if !exists(filepath.Join(e.root, "shop_sym-0_uid-3")) {
		t.Error("symlink named like a pod directory removed")
	}
	if !strings.Contains(e.logs.String(), `msg="removed the log directory of a gone pod" component=filelogs dir=`+filepath.Join(e.root, goneDir)) {
		t.Errorf("removal not logged:\n%s", e.logs.String())
	}
}

func TestManager_Pass_beforeSynchronize(t *testing.T) {
	// Until the runtime told which pods it has, no pod is gone.
	e := newTestEnv(t, time.Hour)
	e.now.t = time.Now()
	writeFile(t, filepath.Join(e.root, goneDir, "app", "app-logs", "a.log"), "a")
	writeFile(t, filepath.Join(e.root, goneDir, filelogs.GoneFile), "2000-01-01T00:00:00Z\n")
	if st := e.m.Pass(context.Background()); st.RemovedPods != 0 || st.Errors != 0 {
		t.Fatalf("pass = %+v, want nothing removed", st)
	}
	if !exists(filepath.Join(e.root, goneDir, "app", "app-logs", "a.log")) {
		t.Error("pod directory removed before Synchronize")
	}
	// After Synchronize without that pod: the old mark holds, it goes.
	e.m.Synchronize(context.Background(), nil, nil)
	if st := e.m.Pass(context.Background()); st.RemovedPods != 1 {
		t.Fatalf("pass = %+v, want the pod removed", st)
	}
}

func TestManager_Pass_liveClearsMark(t *testing.T) {
	e := newTestEnv(t, time.Hour)
	e.now.t = time.Now()
	if _, err := e.m.CreateContainer(testPod(), testContainer("app", "KUBERNETES_FILELOGS=/app/logs")); err != nil {
		t.Fatal(err)
	}
	e.m.Synchronize(context.Background(), []*api.PodSandbox{testPod()}, nil)
	mark := filepath.Join(e.root, testPodDir, filelogs.GoneFile)
	writeFile(t, mark, "2000-01-01T00:00:00Z\n")
	if st := e.m.Pass(context.Background()); st.RemovedPods != 0 || st.Errors != 0 {
		t.Fatalf("pass = %+v, want nothing removed", st)
	}
	if exists(mark) {
		t.Error("a live pod keeps its gone mark")
	}
}

func TestManager_Pass_badMark(t *testing.T) {
	e := newTestEnv(t, time.Hour)
	e.now.t = time.Now().Truncate(time.Second)
	e.m.Synchronize(context.Background(), nil, nil)
	writeFile(t, filepath.Join(e.root, goneDir, filelogs.GoneFile), "yesterday")
	if st := e.m.Pass(context.Background()); st.RemovedPods != 0 {
		t.Fatalf("pass = %+v, want nothing removed", st)
	}
	if b, _ := os.ReadFile(filepath.Join(e.root, goneDir, filelogs.GoneFile)); string(b) != e.now.t.UTC().Format(time.RFC3339Nano)+"\n" {
		t.Errorf("mark = %q, want now", b)
	}
}

func TestManager_Pass_mountPoint(t *testing.T) {
	// A file system mounted inside a log directory is not Berth's: nothing
	// in it is removed, and a gone pod's directory around it stays.
	e := newTestEnv(t, time.Minute)
	now := time.Now()
	e.now.t = now
	e.m.Synchronize(context.Background(), nil, nil)
	mnt := filepath.Join(e.root, goneDir, "app", "app-logs", "mnt")
	mkdir(t, mnt)
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs (the test needs root): %v", err)
	}
	// The removal renames the pod directory first; the mount moves with it.
	moved := filepath.Join(e.root, filelogs.TrashPrefix+goneUID, "app", "app-logs", "mnt")
	t.Cleanup(func() {
		_ = unix.Unmount(mnt, unix.MNT_DETACH)
		_ = unix.Unmount(moved, unix.MNT_DETACH)
	})
	writeFile(t, mnt+"/old.log", "old")
	setMtime(t, mnt+"/old.log", now.Add(-time.Hour))
	writeFile(t, filepath.Join(e.root, goneDir, filelogs.GoneFile), now.Add(-time.Hour).UTC().Format(time.RFC3339Nano))

	st := e.m.Pass(context.Background())
	if !exists(moved + "/old.log") {
		t.Error("a file on another file system was removed")
	}
	if st.Errors == 0 || !strings.Contains(errString(st.FirstError), "another file system is mounted there") {
		t.Errorf("pass = %+v, want the mount point reported", st)
	}
}

func TestManager_Pass_deepTree(t *testing.T) {
	e := newTestEnv(t, time.Minute)
	e.now.t = time.Now()
	p := filepath.Join(e.root, testPodDir, "app", "app-logs")
	for range maxDepth + 5 {
		p = filepath.Join(p, "d")
	}
	mkdir(t, p)
	st := e.m.Pass(context.Background())
	if st.Errors != 1 || !strings.Contains(errString(st.FirstError), fmt.Sprintf("more than %d directories deep", maxDepth)) {
		t.Errorf("pass = %+v, want one error about depth", st)
	}
}

func TestManager_Start(t *testing.T) {
	e := newTestEnv(t, time.Minute)
	e.m.cfg.Interval = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.m.Start(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(e.logs.String(), `msg="retention pass"`) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no two passes:\n%s", e.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Start = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Start did not return")
	}
	if got := value(t, e.m.metrics.lastPass); got <= 0 {
		t.Errorf("last pass timestamp = %v", got)
	}
}
