//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/controller/ipclaimgc"
)

// TestChaos_ForceDeleteWhileSandboxRuns: db-0 of a StatefulSet is
// force-deleted while its sandbox still runs (kubelet is stopped, so
// nothing on the node tears it down). Its address stays Bound to the old
// pod while the sandbox may answer on it: berth-controller sees the pod
// object gone but leaves the claim to the node's agent, which renews its
// lease. Once kubelet is back and tears the old sandbox down, the agent
// releases the address and db-0's successor, which waited, gets it.
func TestChaos_ForceDeleteWhileSandboxRuns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := namespace(t, "e2e-chaos-force")
	a := appSpec{name: "db", replicas: 1, grace: 1}
	createStatefulSet(ctx, t, ns, a)
	old := readyPods(ctx, t, ns, a.name, 1, nil)[0]
	addr := old.Status.PodIP

	// Hold the sandbox: kubelet stops (at most about a minute, well
	// inside the node's 40 s lease grace plus kube-controller-manager's
	// reaction, so the node does not go NotReady and evict).
	if out, err := run(ctx, clusterSh, "stop-kubelet"); err != nil {
		t.Fatalf("stop kubelet: %v\n%s", err, out)
	}
	kubeletBack := false
	startKubelet := func() {
		if kubeletBack {
			return
		}
		kubeletBack = true
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer scancel()
		if out, err := run(sctx, clusterSh, "start-kubelet"); err != nil {
			t.Fatalf("start kubelet: %v\n%s", err, out)
		}
		waitNodeReady(sctx, t)
	}
	t.Cleanup(startKubelet)
	if err := client.CoreV1().Pods(ns).Delete(ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
		t.Fatalf("force delete %s: %v", old.Name, err)
	}

	// The controller sees the pod object gone and leaves the claim to the
	// node's agent (condition Orphaned=False, reason AgentActive): the
	// address is still the old sandbox's.
	var claim v1alpha1.IPClaim
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		claims, err := claimsOf(ctx, ns)
		if err != nil {
			return false, nil
		}
		for _, c := range claims {
			if c.Spec.Pod.UID == old.UID {
				claim = c
				cond := meta.FindStatusCondition(c.Status.Conditions, ipclaimgc.ConditionOrphaned)
				return cond != nil && cond.Reason == ipclaimgc.ReasonAgentActive, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the claim of force-deleted %s (%s) was not left to the node's agent: %+v", old.Name, addr, claim)
	}
	if claim.Spec.State != v1alpha1.ClaimBound || claim.Spec.Address != addr {
		t.Fatalf("the claim of force-deleted %s is %s (%s) while its sandbox runs, want Bound (%s)", old.Name, claim.Spec.State, claim.Spec.Address, addr)
	}
	// No other pod holds the address meanwhile.
	claims, err := claimsOf(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range claims {
		if c.Spec.Address == addr && c.Spec.Pod.UID != old.UID {
			t.Fatalf("%s is claimed by %s (%s) while force-deleted %s's sandbox still runs", addr, c.Spec.Pod.Name, c.Spec.Pod.UID, old.Name)
		}
	}

	// kubelet tears the old sandbox down; its DEL (or the agent's sweep)
	// releases the address for db-0's successor.
	startKubelet()
	next := readyPods(ctx, t, ns, a.name, 1, uids([]corev1.Pod{old}))[0]
	if next.Status.PodIP != addr {
		t.Errorf("db-0's successor has %s, want its ordinal's %s", next.Status.PodIP, addr)
	}
	checkClaims(ctx, t, ns, []corev1.Pod{next})
}

// TestChaos_GCEmptyList: the real berth-ipam on the node receives a CNI
// GC of the cluster's network listing no attachment at all (a runtime
// that lost its state, or a truncated list) while a Deployment's pods
// run: every running pod keeps its claim (their pods report the
// addresses, and the list would take more than half of the node's claims).
func TestChaos_GCEmptyList(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ns := namespace(t, "e2e-chaos-gc")
	a := appSpec{name: "busy", replicas: 6, grace: 1}
	createDeployment(ctx, t, ns, a)
	pods := readyPods(ctx, t, ns, a.name, int(a.replicas), nil)
	checkClaims(ctx, t, ns, pods)

	// GC keeps off ADDs of the last two minutes, also across agent
	// restarts (from the attachment records' times): make these an hour
	// old and restart the agent, so that only the pods' own state can
	// save their claims.
	records, err := filepath.Glob("/run/berth/ipam-attachments/*.json")
	if err != nil || len(records) < int(a.replicas) {
		t.Fatalf("attachment records: %v, %v", records, err)
	}
	for _, f := range records {
		if err := os.Chtimes(f, time.Now().Add(-time.Hour), time.Now().Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	agent := agentPod(ctx, t)
	expectAgentRestart(t, agent)
	killContainer(t, agent, "berth-agent")
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := client.CoreV1().Pods(berthNamespace).Get(ctx, agent.Name, metav1.GetOptions{})
		return err == nil && podReady(p) && p.Status.ContainerStatuses[0].RestartCount > agent.Status.ContainerStatuses[0].RestartCount, nil
	})
	if err != nil {
		t.Fatalf("the agent did not come back Ready:\n%s", describe(berthNamespace, "pod/"+agent.Name))
	}
	// kubelet sees the network ready again (berth-ipam's STATUS) at its
	// next runtime status check: leave the node as the suite found it.
	t.Cleanup(func() {
		wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer wcancel()
		waitNodeReady(wctx, t)
	})

	agent = agentPod(ctx, t)
	const keptLive = `berth_agent_ipam_gc_claims_total{result="kept_live",source="cni"}`

	conf := `{"cniVersion": "1.1.0", "name": "` + clusterNetwork + `", "type": "bridge",
		"ipam": {"type": "berth-ipam", "pools": ["` + podPool + `"]}, "cni.dev/valid-attachments": []}`
	cmd := exec.CommandContext(ctx, "/opt/cni/bin/berth-ipam")
	cmd.Env = []string{"CNI_COMMAND=GC", "CNI_PATH=/opt/cni/bin"}
	cmd.Stdin = strings.NewReader(conf)
	out, gcErr := cmd.CombinedOutput()
	t.Logf("berth-ipam GC with an empty list: %v %s", gcErr, out)
	// The GC looked at the pods' claims (none was within its grace) and
	// kept them because the pods report their addresses.
	if kept := metricValue(t, agentMetrics(ctx, t, agent), keptLive); kept < float64(a.replicas) {
		t.Errorf("%s = %v after the GC, want at least %d (the Deployment's pods)", keptLive, kept, a.replicas)
	}

	// Whether refused (an error) or not, nothing of the running pods is
	// released: their claims are as before, Bound to them.
	checkClaims(ctx, t, ns, pods)
	claims, err := claimsOf(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range claims {
		if c.Spec.State != v1alpha1.ClaimBound {
			t.Errorf("claim %s (%s) of a running pod is %s after GC with an empty list", c.Name, c.Spec.Address, c.Spec.State)
		}
	}
}

// waitNodeReady waits until ctx ends for the node to be Ready again after
// a fault (kubelet restarted, the agent restarted: kubelet sees the
// network ready at its next runtime status check), and fails with the
// node's condition otherwise.
func waitNodeReady(ctx context.Context, t *testing.T) {
	t.Helper()
	var last string
	err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil || len(nodes.Items) != 1 {
			last = fmt.Sprintf("list nodes: %v", err)
			return false, nil
		}
		for _, c := range nodes.Items[0].Status.Conditions {
			if c.Type == corev1.NodeReady {
				last = fmt.Sprintf("%s: %s: %s", c.Status, c.Reason, c.Message)
				return c.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the node is not Ready again after the fault: %s", last)
	}
}
