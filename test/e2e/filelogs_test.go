//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// logsRoot is the agent's --filelogs-root in deploy/base: this host is the
// node, so the test reads it directly.
const logsRoot = "/logs"

// TestFileLogs: a Deployment whose container declares two log directories
// writes files that appear on the host; a container restart keeps them;
// the replacement of a deleted pod writes to its own directory; with a
// short retention the old pod's directory goes (and an idle file of the
// live pod too, while the busy one stays).
func TestFileLogs(t *testing.T) {
	ns := namespace(t, "e2e-filelogs")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// The app: a start line in each directory, then a tick every 2 s in
	// app.log until /tmp/exit exists (to restart it on demand).
	script := `echo "start $HOSTNAME" >> /app/logs/app.log; echo "audit $HOSTNAME" >> /app/audit/audit.log
while [ ! -e /tmp/exit ]; do echo tick >> /app/logs/app.log; sleep 2; done`
	labels := map[string]string{"app": "writer"}
	pod := testPod("", labels, "/bin/sh", "-c", script)
	pod.Spec.Containers[0].Name = "app"
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "KUBERNETES_FILELOGS", Value: "/app/logs,/app/audit"}}
	replicas := int32(1)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "writer"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: pod.Spec},
		},
	}
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}

	// Step 1: the files appear on the host, one directory per path, with
	// the metadata file next to them.
	first := readyPod(ctx, t, ns, "app=writer", "")
	firstDir := podLogDir(ns, first)
	waitContains(t, filepath.Join(firstDir, "app", "app-logs", "app.log"), "start "+first.Name)
	waitContains(t, filepath.Join(firstDir, "app", "app-audit", "audit.log"), "audit "+first.Name)
	var md struct {
		Namespace, Pod, UID, Container string
		Paths                          []struct{ Path, Dir string }
		Labels                         map[string]string
	}
	b, err := os.ReadFile(filepath.Join(firstDir, "app", ".berth-filelogs.json"))
	if err != nil {
		t.Fatalf("metadata file: %v", err)
	}
	if err := json.Unmarshal(b, &md); err != nil {
		t.Fatalf("metadata %s: %v", b, err)
	}
	if md.Namespace != ns || md.Pod != first.Name || md.UID != string(first.UID) || md.Container != "app" ||
		len(md.Paths) != 2 || md.Paths[0].Path != "/app/logs" || md.Paths[1].Dir != "app-audit" || md.Labels["app"] != "writer" {
		t.Errorf("metadata = %s", b)
	}

	// Step 2: the container restarts in the same pod: the file is still
	// there and the app appends to it.
	if _, err := kubectlRun(ctx, "-n", ns, "exec", first.Name, "--", "touch", "/tmp/exit"); err != nil {
		t.Fatal(err)
	}
	if _, err := waitPod(ctx, ns, first.Name, func(p *corev1.Pod) bool {
		return podReady(p) && len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1
	}); err != nil {
		t.Fatalf("container did not restart: %v\n%s", err, describe(ns, "pod/"+first.Name))
	}
	pollFor(t, "a second start line in app.log", func() bool {
		b, _ := os.ReadFile(filepath.Join(firstDir, "app", "app-logs", "app.log"))
		return strings.Count(string(b), "start "+first.Name) == 2
	})

	// Step 3: the pod is deleted; its replacement writes to its own
	// directory, and the old one stays (the retention is 48h).
	if _, err := kubectlRun(ctx, "-n", ns, "delete", "pod", first.Name, "--wait=true"); err != nil {
		t.Fatal(err)
	}
	second := readyPod(ctx, t, ns, "app=writer", first.Name)
	secondDir := podLogDir(ns, second)
	waitContains(t, filepath.Join(secondDir, "app", "app-logs", "app.log"), "start "+second.Name)
	if b, _ := os.ReadFile(filepath.Join(secondDir, "app", "app-logs", "app.log")); strings.Contains(string(b), first.Name) {
		t.Errorf("the replacement's app.log has the first pod's lines:\n%s", b)
	}
	if _, err := os.Stat(firstDir); err != nil {
		t.Errorf("the deleted pod's directory: %v, want it kept for the retention", err)
	}
	if m := agentMetrics(ctx, t, agentPod(ctx, t)); !strings.Contains(m, `berth_agent_filelogs_containers_total{result="mounted"}`) {
		t.Errorf("agent metrics lack berth_agent_filelogs_containers_total{result=\"mounted\"}")
	}

	// Step 4: a short retention. The old pod's directory goes once kubelet
	// removed its sandbox and 20 s passed; in the live pod the idle
	// audit.log goes, the busy app.log stays.
	setAgentArgs(t, "--filelogs-retention=20s", "--filelogs-retention-interval=2s")
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 4*time.Minute, true, func(context.Context) (bool, error) {
		_, err := os.Stat(firstDir)
		return os.IsNotExist(err), nil
	}); err != nil {
		t.Fatalf("the deleted pod's directory %s is still there after 4 minutes\n%s", firstDir, agentLogs(ctx, t, agentPod(ctx, t)))
	}
	pollFor(t, "the idle audit.log of the live pod to go", func() bool {
		_, err := os.Stat(filepath.Join(secondDir, "app", "app-audit", "audit.log"))
		return os.IsNotExist(err)
	})
	for _, p := range []string{"app/app-logs/app.log", "app/app-audit", "app/.berth-filelogs.json"} {
		if _, err := os.Stat(filepath.Join(secondDir, p)); err != nil {
			t.Errorf("live pod's %s: %v", p, err)
		}
	}
	if m := agentMetrics(ctx, t, agentPod(ctx, t)); !strings.Contains(m, fmt.Sprintf(`berth_agent_filelogs_pod_bytes{namespace=%q,pod=%q,uid=%q}`, ns, second.Name, second.UID)) {
		t.Errorf("agent metrics lack berth_agent_filelogs_pod_bytes of %s", second.Name)
	}
}

// TestFileLogs_badValue: a bad KUBERNETES_FILELOGS fails the container with
// a message that kubectl describe shows, and a Warning Event.
func TestFileLogs_badValue(t *testing.T) {
	ns := namespace(t, "e2e-filelogs-bad")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pod := testPod("bad", nil, "sleep", "3600")
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "KUBERNETES_FILELOGS", Value: "app/logs"}}
	if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want := `KUBERNETES_FILELOGS="app/logs": path "app/logs" is relative: want an absolute path (starting with "/")`
	if _, err := waitPod(ctx, ns, "bad", func(p *corev1.Pod) bool {
		for _, cs := range p.Status.ContainerStatuses {
			if w := cs.State.Waiting; w != nil && w.Reason == "CreateContainerError" && strings.Contains(w.Message, want) {
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatalf("no CreateContainerError with %q: %v\n%s", want, err, describe(ns, "pod/bad"))
	}
	pollFor(t, "the FileLogsRejected event in kubectl describe", func() bool {
		d, _ := kubectlRun(ctx, "-n", ns, "describe", "pod", "bad")
		return strings.Contains(d, "FileLogsRejected") && strings.Contains(strings.Join(strings.Fields(d), " "), want)
	})
	d, _ := kubectlRun(ctx, "-n", ns, "describe", "pod", "bad")
	t.Logf("kubectl describe pod bad:\n%s", d)
}

// readyPod waits for a Ready pod matching selector, other than not.
func readyPod(ctx context.Context, t *testing.T, ns, selector, not string) *corev1.Pod {
	t.Helper()
	var got *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.Name != not && p.DeletionTimestamp == nil && podReady(p) {
				got = p
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		ev, _ := kubectlRun(ctx, "-n", ns, "get", "events")
		t.Fatalf("no ready pod %s in %s: %v\n%s", selector, ns, err, ev)
	}
	return got
}

func podLogDir(ns string, p *corev1.Pod) string {
	return filepath.Join(logsRoot, ns+"_"+p.Name+"_"+string(p.UID))
}

// waitContains waits until the file at p contains s.
func waitContains(t *testing.T, p, s string) {
	t.Helper()
	pollFor(t, fmt.Sprintf("%s to contain %q", p, s), func() bool {
		b, _ := os.ReadFile(p)
		return strings.Contains(string(b), s)
	})
}

// pollFor polls cond every 500 ms for up to 2 minutes.
func pollFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// setAgentArgs adds args to the agent DaemonSet's container (replacing
// flags of the same name) and waits for the rollout; the test's end puts
// the original args back and waits again.
func setAgentArgs(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dss := client.AppsV1().DaemonSets(berthNamespace)
	ds, err := dss.Get(ctx, "berth-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	orig := slices.Clone(ds.Spec.Template.Spec.Containers[0].Args)
	update := func(ctx context.Context, newArgs []string) error {
		return wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
			ds, err := dss.Get(ctx, "berth-agent", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			ds.Spec.Template.Spec.Containers[0].Args = newArgs
			_, err = dss.Update(ctx, ds, metav1.UpdateOptions{})
			return err == nil, nil // retried on a conflict
		})
	}
	var newArgs []string
	for _, a := range orig {
		name, _, _ := strings.Cut(a, "=")
		if !slices.ContainsFunc(args, func(b string) bool { return strings.HasPrefix(b, name+"=") }) {
			newArgs = append(newArgs, a)
		}
	}
	newArgs = append(newArgs, args...)
	if err := update(ctx, newArgs); err != nil {
		t.Fatalf("update the agent's args: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := update(ctx, orig); err != nil {
			t.Errorf("restore the agent's args: %v", err)
			return
		}
		if out, err := kubectlRun(ctx, "-n", berthNamespace, "rollout", "status", "daemonset/berth-agent", "--timeout=2m"); err != nil {
			t.Errorf("rollout after restoring the args: %v\n%s", err, out)
		}
	})
	if out, err := kubectlRun(ctx, "-n", berthNamespace, "rollout", "status", "daemonset/berth-agent", "--timeout=2m"); err != nil {
		t.Fatalf("rollout: %v\n%s", err, out)
	}
}
