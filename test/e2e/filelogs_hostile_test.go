//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestFileLogs_hostile: a pod limited to 1Mi (berth.io/filelogs-size-limit)
// writes 5 MiB to its log directory and plants there a symlink to a file
// of the host, a symlink up the tree, a hard link, a FIFO, a device node,
// a set-user-ID file, a set-group-ID directory and a file dated 2099.
// Within a few passes (--filelogs-retention-interval=2s) the host file is
// untouched, nothing planted is left, the container is under its limit,
// its pod has FileLogsUnsafeFiles and FileLogsOverLimit Events, and the
// agent's metrics count it.
func TestFileLogs_hostile(t *testing.T) {
	ns := namespace(t, "e2e-filelogs-hostile")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("a host file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(victim, 0o755|fs.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	victimBefore, err := os.Lstat(victim)
	if err != nil {
		t.Fatal(err)
	}
	setAgentArgs(t, "--filelogs-retention-interval=2s")

	script := fmt.Sprintf(`d=/app/logs
i=0; while [ $i -lt 5 ]; do dd if=/dev/zero of=$d/big-$i.log bs=65536 count=16 2>/dev/null; i=$((i+1)); done
echo x > $d/orig; ln $d/orig $d/hard
ln -s %s $d/link-out; ln -s ../../../../../.. $d/link-up
mkfifo $d/fifo; mknod $d/mem c 1 1 && touch $d/mknod-ok
echo '#!/bin/sh' > $d/suid; chmod 4755 $d/suid
mkdir $d/sgid; chmod 2775 $d/sgid
echo later > $d/future.log; touch -d '2099-01-01 00:00:00' $d/future.log
touch $d/planted
exec sleep 3600`, victim)
	pod := testPod("hostile", nil, "/bin/sh", "-c", script)
	pod.Annotations = map[string]string{"berth.io/filelogs-size-limit": "1Mi"}
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "KUBERNETES_FILELOGS", Value: "/app/logs"}}
	got := createPodReady(t, ns, pod)
	logs := filepath.Join(podLogDir(ns, got), "main", "app-logs")
	waitExists(t, filepath.Join(logs, "planted"))

	var problems []string
	deadline := time.Now().Add(2 * time.Minute)
	for {
		problems = hostileLeft(logs, 1<<20)
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if len(problems) > 0 {
		t.Errorf("after 2 minutes of passes every 2 s, %s still has:\n%s\n%s", logs, strings.Join(problems, "\n"),
			agentLogs(ctx, t, agentPod(ctx, t)))
	}
	if after, err := os.Lstat(victim); err != nil || after.Mode() != victimBefore.Mode() || !after.ModTime().Equal(victimBefore.ModTime()) {
		t.Errorf("the host file the symlink pointed to changed: %v, %v (was %v)", after, err, victimBefore)
	}
	if b, _ := os.ReadFile(victim); string(b) != "a host file\n" {
		t.Errorf("the host file's content is now %q", b)
	}

	pollFor(t, "the FileLogsUnsafeFiles and FileLogsOverLimit Events", func() bool {
		evs, err := client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=hostile"})
		if err != nil {
			return false
		}
		seen := map[string]bool{}
		for _, e := range evs.Items {
			seen[e.Reason] = true
		}
		return seen["FileLogsUnsafeFiles"] && seen["FileLogsOverLimit"]
	})
	m := agentMetrics(ctx, t, agentPod(ctx, t))
	want := []string{
		`(?m)^berth_agent_filelogs_unsafe_entries_total\{kind="symlink"\} [1-9]`,
		`(?m)^berth_agent_filelogs_unsafe_entries_total\{kind="fifo"\} [1-9]`,
		`(?m)^berth_agent_filelogs_unsafe_entries_total\{kind="setid"\} [1-9]`,
		fmt.Sprintf(`(?m)^berth_agent_filelogs_over_limit_total\{container="main",namespace=%q,pod="hostile",uid=%q\} [1-9]`, ns, got.UID),
	}
	if _, err := os.Lstat(filepath.Join(logs, "mknod-ok")); err == nil { // the runtime let it make a device node
		want = append(want, `(?m)^berth_agent_filelogs_unsafe_entries_total\{kind="device"\} [1-9]`)
	}
	for _, re := range want {
		if !regexp.MustCompile(re).MatchString(m) {
			t.Errorf("agent metrics lack %s", re)
		}
	}
}

// hostileLeft lists what retention should have removed or fixed below
// logs: entries that are neither regular files nor directories, files with
// several links, set-ID bits, mtimes in the future, and a disk use over
// limit.
func hostileLeft(logs string, limit int64) []string {
	var left []string
	var used int64
	err := filepath.WalkDir(logs, func(p string, _ fs.DirEntry, err error) error {
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
			left = append(left, fmt.Sprintf("%s: %v", p, fi.Mode()))
		case fi.Mode().IsRegular() && sys.Nlink > 1:
			left = append(left, fmt.Sprintf("%s: %d links", p, sys.Nlink))
		case fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0:
			left = append(left, fmt.Sprintf("%s: %v", p, fi.Mode()))
		case fi.ModTime().After(time.Now().Add(time.Minute)):
			left = append(left, fmt.Sprintf("%s: mtime %v", p, fi.ModTime()))
		}
		return nil
	})
	if err != nil {
		return []string{err.Error()}
	}
	if used > limit {
		left = append(left, fmt.Sprintf("%d bytes in use, over the limit of %d", used, limit))
	}
	return left
}

// waitExists waits until p exists.
func waitExists(t *testing.T, p string) {
	t.Helper()
	pollFor(t, p+" to exist", func() bool {
		_, err := os.Lstat(p)
		return err == nil
	})
}
