//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/berth-io/berth/test/procstat"
)

func TestCluster_NodeReady(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list nodes: %v", err)
	}
	if len(nodes.Items) != 1 {
		t.Fatalf("want 1 node, got %d", len(nodes.Items))
	}
	for _, c := range nodes.Items[0].Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
			t.Fatalf("node %s not Ready: %s: %s", nodes.Items[0].Name, c.Reason, c.Message)
		}
	}
}

// TestCluster_Pods: a pod of the test image runs and gets an IP; logs and
// exec work; it resolves kubernetes.default through CoreDNS and reaches
// another pod through a ClusterIP Service.
func TestCluster_Pods(t *testing.T) {
	ns := namespace(t, "e2e-pods")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	server := createPodReady(t, ns, testPod("server", map[string]string{"app": "server"},
		"/bin/nettool", "serve", "-listen", ":8080", "-text", "hello from server"))
	if net.ParseIP(server.Status.PodIP) == nil {
		t.Fatalf("server pod has no IP: %q", server.Status.PodIP)
	}
	client1 := createPodReady(t, ns, testPod("client", nil, "/bin/sh", "-c", "echo client started; exec sleep 3600"))
	if client1.Status.PodIP == "" || client1.Status.PodIP == server.Status.PodIP {
		t.Fatalf("client pod IP %q (server %q)", client1.Status.PodIP, server.Status.PodIP)
	}

	t.Run("logs", func(t *testing.T) {
		out, err := kubectlRun(ctx, "-n", ns, "logs", "client")
		if err != nil || !strings.Contains(out, "client started") {
			t.Fatalf("kubectl logs: %q, %v", out, err)
		}
	})
	t.Run("exec", func(t *testing.T) {
		out, err := kubectlRun(ctx, "-n", ns, "exec", "client", "--", "cat", "/etc/hostname")
		if err != nil || strings.TrimSpace(out) != "client" {
			t.Fatalf("kubectl exec: %q, %v", out, err)
		}
	})
	t.Run("pod to pod", func(t *testing.T) {
		out, err := kubectlRun(ctx, "-n", ns, "exec", "client", "--",
			"nettool", "get", "-timeout", "5s", "http://"+net.JoinHostPort(server.Status.PodIP, "8080")+"/")
		if err != nil || out != "hello from server" {
			t.Fatalf("GET server pod: %q, %v", out, err)
		}
	})
	t.Run("dns", func(t *testing.T) {
		out, err := kubectlRun(ctx, "-n", ns, "exec", "client", "--", "nettool", "lookup", "-timeout", "5s", "kubernetes.default")
		if err != nil || strings.TrimSpace(out) != "10.96.0.1" {
			t.Fatalf("lookup kubernetes.default: %q, %v\n%s", out, err, describe("kube-system", "deployment/coredns"))
		}
	})
	t.Run("service", func(t *testing.T) {
		svc, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "server"},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"app": "server"},
				Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create service: %v", err)
		}
		// kube-proxy programs the Service asynchronously: retry the GET, bounded.
		var out string
		err = wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
			out, err = kubectlRun(ctx, "-n", ns, "exec", "client", "--", "nettool", "get", "-timeout", "3s", "http://server/")
			return err == nil, nil
		})
		if err != nil || out != "hello from server" {
			t.Fatalf("GET http://server/ (ClusterIP %s): %q, %v\n%s", svc.Spec.ClusterIP, out, err, describe(ns, "service/server"))
		}
	})
}

// TestBerth_Agent: the DaemonSet is Ready and its pod serves /metrics.
func TestBerth_Agent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ds, err := client.AppsV1().DaemonSets(berthNamespace).Get(ctx, "berth-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get DaemonSet: %v", err)
	}
	if !daemonSetReady(ds) {
		t.Fatalf("DaemonSet berth-agent not ready: %+v\n%s", ds.Status, describe(berthNamespace, "daemonset/berth-agent"))
	}
	pod := agentPod(ctx, t)
	body := agentMetrics(ctx, t, pod)
	for _, want := range []string{"berth_build_info{", "berth_agent_nri_connected 1", "berth_agent_nri_synchronized 1", "process_resident_memory_bytes", "go_goroutines"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// The manifest sets GOMEMLIMIT to the container's memory limit.
	limit := pod.Spec.Containers[0].Resources.Limits.Memory().Value()
	got := metricValue(t, body, "go_gc_gomemlimit_bytes")
	if limit == 0 || got != float64(limit) {
		t.Errorf("go_gc_gomemlimit_bytes is %v, want the container's memory limit %d", got, limit)
	}
}

// TestBerth_AgentReconnectsAfterContainerdRestart restarts containerd and
// waits for the agent to reconnect to NRI and log an event of a new container.
func TestBerth_AgentReconnectsAfterContainerdRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pod := agentPod(ctx, t)
	before := strings.Count(agentLogs(ctx, t, pod), `msg="connected to runtime"`)
	if before == 0 {
		t.Fatalf("the agent never logged a connection to the runtime:\n%s", agentLogs(ctx, t, pod))
	}
	if _, err := run(ctx, clusterSh, "restart-containerd"); err != nil {
		t.Fatalf("restart containerd: %v", err)
	}
	err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		return strings.Count(agentLogs(ctx, t, pod), `msg="connected to runtime"`) > before, nil
	})
	if err != nil {
		t.Fatalf("agent did not reconnect after containerd restarted:\n%s", agentLogs(ctx, t, pod))
	}
	ns := namespace(t, "e2e-reconnect")
	createPodReady(t, ns, testPod("after-restart", nil, "sleep", "3600"))
	want := fmt.Sprintf(`namespace=%s pod=after-restart container=main`, ns)
	err = wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		return strings.Contains(agentLogs(ctx, t, pod), want), nil
	})
	if err != nil {
		t.Fatalf("agent logged no event with %q after reconnecting:\n%s", want, agentLogs(ctx, t, pod))
	}
	body := agentMetrics(ctx, t, pod)
	for _, want := range []string{"berth_agent_nri_connected 1", "berth_agent_nri_synchronized 1"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q after reconnecting", want)
		}
	}
}

func daemonSetReady(ds *appsv1.DaemonSet) bool {
	s := ds.Status
	return s.DesiredNumberScheduled > 0 && s.NumberReady == s.DesiredNumberScheduled &&
		s.UpdatedNumberScheduled == s.DesiredNumberScheduled && s.ObservedGeneration >= ds.Generation
}

func agentPod(ctx context.Context, t *testing.T) *corev1.Pod {
	t.Helper()
	pods, err := client.CoreV1().Pods(berthNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=berth-agent"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("want one berth-agent pod, got %d (%v)", len(pods.Items), err)
	}
	p := &pods.Items[0]
	if !podReady(p) {
		t.Fatalf("agent pod %s not ready\n%s", p.Name, describe(berthNamespace, "pod/"+p.Name))
	}
	return p
}

func agentLogs(ctx context.Context, t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	out, err := kubectlRun(ctx, "-n", berthNamespace, "logs", pod.Name)
	if err != nil {
		t.Logf("agent logs: %v", err)
	}
	return out
}

// agentMetrics scrapes the agent, which runs in the host network namespace,
// on the node's own address.
func agentMetrics(ctx context.Context, t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	return hostMetrics(ctx, t, pod, "9470")
}

// controllerMetrics scrapes berth-controller (one replica, the leader, in
// the host network namespace too).
func controllerMetrics(ctx context.Context, t *testing.T) string {
	t.Helper()
	pods, err := client.CoreV1().Pods(berthNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=berth-controller"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("want one berth-controller pod, got %d (%v)", len(pods.Items), err)
	}
	return hostMetrics(ctx, t, &pods.Items[0], "9480")
}

// hostMetrics scrapes /metrics of a host-network pod on port.
func hostMetrics(ctx context.Context, t *testing.T, pod *corev1.Pod, port string) string {
	t.Helper()
	url := "http://" + net.JoinHostPort(pod.Status.HostIP, port) + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	return string(b)
}

// killContainer sends SIGKILL to the main process of the pod's container
// on this host, found by the container ID in its cgroup, so that only that
// container dies (not every process of the same name on the host).
func killContainer(t *testing.T, pod *corev1.Pod, container string) {
	t.Helper()
	var id string
	for _, s := range pod.Status.ContainerStatuses {
		if s.Name == container {
			_, id, _ = strings.Cut(s.ContainerID, "://")
		}
	}
	if id == "" {
		t.Fatalf("pod %s has no running container %s", pod.Name, container)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cg, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if err != nil || !strings.Contains(string(cg), id) {
			continue
		}
		// The container's first process: its parent (the shim) is not in
		// the container's cgroup.
		f, err := procstat.Fields(pid)
		if err != nil || len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pcg, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(ppid), "cgroup"))
		if strings.Contains(string(pcg), id) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %s/%s (pid %d): %v", pod.Name, container, pid, err)
		}
		t.Logf("killed %s/%s (pid %d)", pod.Name, container, pid)
		return
	}
	t.Fatalf("no process of container %s (%s) on this host", container, id)
}
