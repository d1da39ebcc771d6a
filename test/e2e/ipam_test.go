//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
)

// The local cluster's pod addresses come from berth-ipam under bridge,
// from the IPPool "pods" (deploy/local/ippool.yaml); pods that opt into
// dual stack also take one of the IPv6 pool "pods6".
const (
	podPool  = "pods"
	podPool6 = "pods6"
)

// dualStack is the annotations of a pod that opts into dual stack, a new
// map each time.
func dualStack() map[string]string {
	return map[string]string{v1alpha1.AnnotationPool: podPool + "," + podPool6}
}

// appSpec is a retained app of the test image: a Deployment (or, with
// statefulSet, a StatefulSet) of replicas pods labelled app=name.
type appSpec struct {
	name        string
	replicas    int32
	annotations map[string]string
	// grace is the pods' termination grace period. The pods' shell runs
	// as PID 1 and ignores SIGTERM, so a deleted pod stays Terminating
	// for all of it, unless endPods ends it.
	grace int64
}

// releaseModes are the two ways a replacement gets its predecessor's
// addresses back: after the old pod's teardown, and with early release
// while the old pod still terminates.
var releaseModes = []struct {
	name  string
	early bool
}{
	{name: "after teardown"},
	{name: "early release", early: true},
}

// releaseEarly makes a's pods ask for early release and stay Terminating
// through the test once deleted (endPods ends them).
func (a *appSpec) releaseEarly() {
	a.grace = 120
	if a.annotations == nil {
		a.annotations = map[string]string{}
	}
	a.annotations[v1alpha1.AnnotationRelease] = "early"
}

func (a appSpec) template() corev1.PodTemplateSpec {
	labels := map[string]string{"app": a.name}
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: a.annotations},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &a.grace,
			Containers: []corev1.Container{{
				Name: "main", Image: testImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", "until [ -e " + stopFile + " ]; do sleep 1; done"},
			}},
		},
	}
}

func createDeployment(ctx context.Context, t *testing.T, ns string, a appSpec) {
	t.Helper()
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: a.name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &a.replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": a.name}},
			Template: a.template(),
		},
	}
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment %s/%s: %v", ns, a.name, err)
	}
}

// createStatefulSet creates a as a StatefulSet whose pods start in
// parallel.
func createStatefulSet(ctx context.Context, t *testing.T, ns string, a appSpec) {
	t.Helper()
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: a.name},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            &a.replicas,
			ServiceName:         a.name,
			PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector:            &metav1.LabelSelector{MatchLabels: map[string]string{"app": a.name}},
			Template:            a.template(),
		},
	}
	if _, err := client.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create statefulset %s/%s: %v", ns, a.name, err)
	}
}

func scaleDeployment(ctx context.Context, t *testing.T, ns, name string, replicas int32) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
	if _, err := client.AppsV1().Deployments(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("scale %s/%s to %d: %v", ns, name, replicas, err)
	}
}

// readyPods waits, until ctx ends, for exactly n pods labelled app=name to
// be Ready with none of them in skip (pods of before, by UID), and returns
// them sorted by name. Terminating pods are not counted.
func readyPods(ctx context.Context, t *testing.T, ns, name string, n int, skip map[types.UID]bool) []corev1.Pod {
	t.Helper()
	var got []corev1.Pod
	err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return false, nil
		}
		got = got[:0]
		for _, p := range list.Items {
			if p.DeletionTimestamp != nil {
				continue
			}
			if skip[p.UID] || !podReady(&p) {
				return false, nil
			}
			got = append(got, p)
		}
		return len(got) == n, nil
	})
	if err != nil {
		t.Fatalf("want %d new Ready pods of %s/%s, have %d: %v\n%s", n, ns, name, len(got), err, describe(ns, "pods"))
	}
	slices.SortFunc(got, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	return got
}

func uids(pods []corev1.Pod) map[types.UID]bool {
	m := map[types.UID]bool{}
	for _, p := range pods {
		m[p.UID] = true
	}
	return m
}

func ips(pods []corev1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Status.PodIP)
	}
	slices.Sort(out)
	return out
}

// podIPs is the pod's status.podIPs, one address of each family at most.
func podIPs(p *corev1.Pod) []string {
	var out []string
	for _, ip := range p.Status.PodIPs {
		out = append(out, ip.IP)
	}
	return out
}

func deletePods(ctx context.Context, t *testing.T, ns string, pods []corev1.Pod) {
	t.Helper()
	for _, p := range pods {
		if err := client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete pod %s/%s: %v", ns, p.Name, err)
		}
	}
}

// claimsOf lists the IPClaims, of any pool, of pods of namespace ns.
func claimsOf(ctx context.Context, ns string) ([]v1alpha1.IPClaim, error) {
	var list v1alpha1.IPClaimList
	if err := berth.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list IPClaims: %w", err)
	}
	var out []v1alpha1.IPClaim
	for _, c := range list.Items {
		if c.Spec.Pod.Namespace == ns {
			out = append(out, c)
		}
	}
	return out, nil
}

// clusterNetwork is the name of the local cluster's CNI network.
const clusterNetwork = "berth"

// checkClaims fails unless every claim of ns held for a pod (Bound or
// Releasing) belongs to one of live, by UID, with one of the pod's
// addresses and the cluster's CNI network, and each of live holds exactly
// one claim per address: nothing leaked, nothing shared.
func checkClaims(ctx context.Context, t *testing.T, ns string, live []corev1.Pod) {
	t.Helper()
	// A claim prepared before its pod's ADD records the container right
	// after the ADD answered (or after an agent restart).
	var claims []v1alpha1.IPClaim
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		if claims, err = claimsOf(ctx, ns); err != nil {
			return false, nil
		}
		for _, c := range claims {
			if c.Spec.State == v1alpha1.ClaimBound && c.Spec.ContainerID == "" {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("a Bound claim records no container a minute after its pods ran: %+v", claims)
	}
	byUID := map[types.UID]corev1.Pod{}
	for _, p := range live {
		byUID[p.UID] = p
	}
	held := map[types.UID]int{}
	for _, c := range claims {
		if c.Spec.State == v1alpha1.ClaimReserved {
			continue
		}
		p, ok := byUID[c.Spec.Pod.UID]
		if !ok {
			t.Errorf("claim %s (%s) is %s for pod %s/%s (uid %s), which is not a live pod of the test: leaked",
				c.Name, c.Spec.Address, c.Spec.State, c.Spec.Pod.Namespace, c.Spec.Pod.Name, c.Spec.Pod.UID)
			continue
		}
		if !slices.Contains(podIPs(&p), c.Spec.Address) {
			t.Errorf("claim %s holds %s for pod %s, whose IPs are %v", c.Name, c.Spec.Address, p.Name, podIPs(&p))
		}
		if c.Spec.Network != clusterNetwork {
			t.Errorf("claim %s of pod %s records CNI network %q, want %q (the local cluster's 10-berth.conflist)", c.Name, p.Name, c.Spec.Network, clusterNetwork)
		}
		held[p.UID]++
	}
	for _, p := range live {
		if want := len(p.Status.PodIPs); held[p.UID] != want {
			t.Errorf("pod %s (%v) holds %d claims, want %d", p.Name, podIPs(&p), held[p.UID], want)
		}
	}
}

// TestIPAM_ReplacementKeepsIP: a Deployment's pod deleted, its replacement
// has the same address: after the old pod's teardown by default, while the
// old pod is still terminating with berth.io/ip-release: early (whose
// interface then has lost the address).
func TestIPAM_ReplacementKeepsIP(t *testing.T) {
	for _, tc := range releaseModes {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			ns := namespace(t, "e2e-ipam-replace")
			a := appSpec{name: "web", replicas: 1, grace: 1}
			if tc.early {
				a.releaseEarly()
			}
			createDeployment(ctx, t, ns, a)
			before := readyPods(ctx, t, ns, a.name, 1, nil)
			deletePods(ctx, t, ns, before)
			after := readyPods(ctx, t, ns, a.name, 1, uids(before))
			t.Logf("%s: %s -> %s: %s", tc.name, before[0].Name, after[0].Name, after[0].Status.PodIP)
			if after[0].Status.PodIP != before[0].Status.PodIP {
				t.Fatalf("replacement %s has %s, its predecessor had %s", after[0].Name, after[0].Status.PodIP, before[0].Status.PodIP)
			}
			if !tc.early {
				checkClaims(ctx, t, ns, after)
				return
			}
			releasedEarly(ctx, t, ns, before[0])
			// Only the live pod holds a claim; the old one's DEL later
			// must not take the address from its successor.
			checkClaims(ctx, t, ns, after)
			endPods(ctx, t, ns)
			checkClaims(ctx, t, ns, readyPods(ctx, t, ns, a.name, 1, uids(before)))
		})
	}
}

// releasedEarly fails unless old, whose replacement runs, is still
// terminating (so early release, not its teardown, gave its addresses
// back), its eth0 has none of its addresses left, and an Event on it says
// which it lost (kubectl describe pod).
func releasedEarly(ctx context.Context, t *testing.T, ns string, old corev1.Pod) {
	t.Helper()
	p, err := client.CoreV1().Pods(ns).Get(ctx, old.Name, metav1.GetOptions{})
	if err != nil || p.DeletionTimestamp == nil {
		t.Fatalf("the old pod %s is no longer terminating (%v): early release was not what gave its addresses back", old.Name, err)
	}
	out, err := kubectlRun(ctx, "-n", ns, "exec", old.Name, "--", "ip", "-o", "addr", "show", "dev", "eth0")
	if err != nil {
		t.Fatalf("ip addr in the terminating pod %s: %v", old.Name, err)
	}
	msg := waitEvent(ctx, t, ns, old.Name, "AddressReleasedEarly", "removed ")
	for _, ip := range podIPs(&old) {
		if strings.Contains(out, " "+ip+"/") {
			t.Errorf("the terminating pod %s still has %s on eth0:\n%s", old.Name, ip, out)
		}
		if !strings.Contains(msg, ip+" from eth0") {
			t.Errorf("the pod's AddressReleasedEarly event does not name %s: %q", ip, msg)
		}
	}
}

// endPods ends the deleted pods of ns that still terminate, and waits
// until they are gone (endTerminating).
func endPods(ctx context.Context, t *testing.T, ns string) {
	t.Helper()
	if err := endTerminating(ctx, ns); err != nil {
		t.Fatalf("the terminating pods did not go within a minute: %v\n%s", err, describe(ns, "pods"))
	}
}

// TestIPAM_Deployment: all three pods of a Deployment deleted at once give
// three replacements with the same three addresses; scaling 3 -> 1 -> 3
// gives the same three back.
func TestIPAM_Deployment(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ns := namespace(t, "e2e-ipam-deploy")
	a := appSpec{name: "web", replicas: 3, grace: 1}
	createDeployment(ctx, t, ns, a)
	first := readyPods(ctx, t, ns, a.name, 3, nil)
	want := ips(first)
	t.Logf("first pods: %v", want)

	deletePods(ctx, t, ns, first)
	second := readyPods(ctx, t, ns, a.name, 3, uids(first))
	if got := ips(second); !slices.Equal(got, want) {
		t.Fatalf("after deleting all three pods: %v, want %v", got, want)
	}
	checkClaims(ctx, t, ns, second)

	scaleDeployment(ctx, t, ns, a.name, 1)
	one := readyPods(ctx, t, ns, a.name, 1, nil)
	if !slices.Contains(want, one[0].Status.PodIP) {
		t.Fatalf("at 1 replica: %s, not one of %v", one[0].Status.PodIP, want)
	}
	// The two released addresses are reserved for the app, not freed.
	err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		claims, err := claimsOf(ctx, ns)
		if err != nil {
			return false, nil
		}
		reserved := 0
		for _, c := range claims {
			if c.Spec.State == v1alpha1.ClaimReserved && c.Spec.App != nil && c.Spec.App.Name == a.name {
				reserved++
			}
		}
		return reserved == 2, nil
	})
	if err != nil {
		t.Fatalf("two addresses not reserved for the app after scaling to 1:\n%s", describe(ns, "pods"))
	}
	// kubectl shows when each reservation ends (a future time: a column of
	// type date would print it as <invalid>).
	out, err := kubectlRun(ctx, "get", "ipclaims", "-o", "wide", "--no-headers")
	if err != nil {
		t.Fatalf("kubectl get ipclaims -o wide: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		// NAME POOL ADDRESS STATE APP POD NODE NETWORK RESERVED-UNTIL AGE;
		// an empty cell (RESERVED-UNTIL of a Bound claim) prints as spaces.
		f := strings.Fields(line)
		if len(f) < 4 || f[3] != string(v1alpha1.ClaimReserved) {
			continue
		}
		if _, err := time.Parse(time.RFC3339, f[len(f)-2]); len(f) != 10 || f[7] != clusterNetwork || err != nil {
			t.Errorf("kubectl get ipclaims -o wide: reserved claim %q, want its NETWORK %s and its RESERVED-UNTIL as an RFC 3339 time", line, clusterNetwork)
		}
	}
	scaleDeployment(ctx, t, ns, a.name, 3)
	third := readyPods(ctx, t, ns, a.name, 3, nil)
	if got := ips(third); !slices.Equal(got, want) {
		t.Fatalf("after 3 -> 1 -> 3: %v, want %v", got, want)
	}
	checkClaims(ctx, t, ns, third)
}

// TestIPAM_StatefulSet: web-0 keeps its address after deletion, and web-1
// keeps its own.
func TestIPAM_StatefulSet(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := namespace(t, "e2e-ipam-sts")
	a := appSpec{name: "web", replicas: 2, grace: 1}
	createStatefulSet(ctx, t, ns, a)
	before := readyPods(ctx, t, ns, a.name, 2, nil)
	deletePods(ctx, t, ns, before[:1])
	after := readyPods(ctx, t, ns, a.name, 2, uids(before[:1]))
	for i := range before {
		if after[i].Name != before[i].Name || after[i].Status.PodIP != before[i].Status.PodIP {
			t.Errorf("%s had %s, now %s has %s", before[i].Name, before[i].Status.PodIP, after[i].Name, after[i].Status.PodIP)
		}
	}
	t.Logf("web-0 %s, web-1 %s", after[0].Status.PodIP, after[1].Status.PodIP)
	checkClaims(ctx, t, ns, after)
}

// TestIPAM_DualStack: the pods of a Deployment that name an IPv4 and an
// IPv6 pool get one address of each, both in status.podIPs (kubelet reads
// them from containerd, which reads berth-ipam's result through bridge);
// they reach each other over IPv6 through the bridge's gateway; and their
// replacements get back the app's addresses of both families, after the
// old pods' teardown and, with berth.io/ip-release: early, while the old
// pods still terminate (their eth0 then has lost both addresses).
func TestIPAM_DualStack(t *testing.T) {
	for _, tc := range releaseModes {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
			defer cancel()
			ns := namespace(t, "e2e-ipam-dual")
			a := appSpec{name: "web", replicas: 2, grace: 1, annotations: dualStack()}
			if tc.early {
				a.releaseEarly()
			}
			createDeployment(ctx, t, ns, a)
			before := readyPods(ctx, t, ns, a.name, 2, nil)
			v4, v6 := byFamily(t, before)
			t.Logf("IPv4 %v, IPv6 %v", v4, v6)

			out, err := kubectlRun(ctx, "-n", ns, "exec", before[0].Name, "--", "ip", "-6", "route", "show", "default")
			if err != nil || !strings.Contains(out, "via fd42:10:244::1 ") {
				t.Errorf("pod %s's IPv6 default route: %q, %v; want one via the pool's gateway fd42:10:244::1", before[0].Name, out, err)
			}
			peer := before[1].Status.PodIPs[1].IP
			if out, err := kubectlRun(ctx, "-n", ns, "exec", before[0].Name, "--", "ping", "-c", "1", "-W", "5", peer); err != nil {
				t.Errorf("pod %s cannot ping %s (pod %s) over IPv6: %v\n%s", before[0].Name, peer, before[1].Name, err, out)
			}
			checkClaims(ctx, t, ns, before)

			deletePods(ctx, t, ns, before)
			after := readyPods(ctx, t, ns, a.name, 2, uids(before))
			a4, a6 := byFamily(t, after)
			if !slices.Equal(a4, v4) || !slices.Equal(a6, v6) {
				t.Errorf("the replacements have IPv4 %v and IPv6 %v; their predecessors had %v and %v", a4, a6, v4, v6)
			}
			if tc.early {
				for _, old := range before {
					releasedEarly(ctx, t, ns, old)
				}
			}
			checkClaims(ctx, t, ns, after)
			if tc.early {
				endPods(ctx, t, ns)
				checkClaims(ctx, t, ns, after)
			}
		})
	}
}

// byFamily checks that each pod has one IPv4 address of pool "pods" (its
// primary, as the node is IPv4) and one IPv6 address of pool "pods6", and
// returns them, each family sorted.
func byFamily(t *testing.T, pods []corev1.Pod) (v4, v6 []string) {
	t.Helper()
	for _, p := range pods {
		ips := podIPs(&p)
		if len(ips) != 2 || !strings.HasPrefix(ips[0], "10.244.0.") || !strings.HasPrefix(ips[1], "fd42:10:244::") {
			t.Fatalf("pod %s has IPs %v; want one of pool %s (10.244.0.0/24) and then one of pool %s (fd42:10:244::/120)",
				p.Name, ips, podPool, podPool6)
		}
		v4, v6 = append(v4, ips[0]), append(v6, ips[1])
	}
	slices.Sort(v4)
	slices.Sort(v6)
	return v4, v6
}

// TestIPAM_OptOut: a pod with berth.io/ip-retain: "false" gets a fresh
// address: its replacement starts while the old pod still terminates (it
// does not wait for an address of its own) with another address, and the
// old address is freed, not reserved.
func TestIPAM_OptOut(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := namespace(t, "e2e-ipam-optout")
	a := appSpec{name: "web", replicas: 1, grace: 30,
		annotations: map[string]string{v1alpha1.AnnotationRetain: "false"}}
	createDeployment(ctx, t, ns, a)
	before := readyPods(ctx, t, ns, a.name, 1, nil)
	deletePods(ctx, t, ns, before)
	after := readyPods(ctx, t, ns, a.name, 1, uids(before))
	if after[0].Status.PodIP == before[0].Status.PodIP {
		t.Fatalf("the opted-out replacement got its predecessor's %s", after[0].Status.PodIP)
	}
	claims, err := claimsOf(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range claims {
		if c.Spec.App != nil {
			t.Errorf("claim %s of an opted-out pod is retained for %+v", c.Name, *c.Spec.App)
		}
	}
	endPods(ctx, t, ns)
	// Its DEL frees the old address outright.
	err = wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		claims, err := claimsOf(ctx, ns)
		if err != nil {
			return false, nil
		}
		for _, c := range claims {
			if c.Spec.Address == before[0].Status.PodIP {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("the old address %s is still claimed after its pod went", before[0].Status.PodIP)
	}
	checkClaims(ctx, t, ns, after)
}

// TestIPAM_AgentKilledMidAllocation: the agent is killed (SIGKILL) while a
// Deployment's pods are being given addresses; once it is back every pod
// runs with one claim of its own, no claim is left for a sandbox that
// failed, and after the Deployment is deleted no claim of it remains.
func TestIPAM_AgentKilledMidAllocation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ns := namespace(t, "e2e-ipam-kill")
	agent := agentPod(ctx, t)
	a := appSpec{name: "burst", replicas: 12, grace: 1}
	createDeployment(ctx, t, ns, a)

	// Kill the agent as soon as the first claim of the burst is committed:
	// the other ADDs are in flight or queued behind it.
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		claims, err := claimsOf(ctx, ns)
		return err == nil && len(claims) > 0, nil
	})
	if err != nil {
		t.Fatalf("no claim of the burst appeared:\n%s", describe(ns, "pods"))
	}
	expectAgentRestart(t, agent)
	killContainer(t, agent, "berth-agent")
	claims, _ := claimsOf(ctx, ns)
	t.Logf("killed the agent with %d claims of %d pods committed", len(claims), a.replicas)

	pods := readyPods(ctx, t, ns, a.name, int(a.replicas), nil)
	agentPod(ctx, t) // back and Ready
	checkClaims(ctx, t, ns, pods)
	seen := map[string]string{}
	for _, p := range pods {
		if other, dup := seen[p.Status.PodIP]; dup {
			t.Errorf("pods %s and %s share %s", other, p.Name, p.Status.PodIP)
		}
		seen[p.Status.PodIP] = p.Name
	}

	if err := client.AppsV1().Deployments(ns).Delete(ctx, a.name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete deployment: %v", err)
	}
	// Each DEL reserves its address; the controller frees reservations of
	// an app that is gone.
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		claims, err := claimsOf(ctx, ns)
		return err == nil && len(claims) == 0, nil
	})
	if err != nil {
		claims, _ := claimsOf(ctx, ns)
		for _, c := range claims {
			t.Logf("left: %s %s %s pod %s", c.Name, c.Spec.Address, c.Spec.State, c.Spec.Pod.Name)
		}
		t.Fatalf("%d claims of the deleted Deployment remain", len(claims))
	}
}

// TestIPAM_BadInput: a pod naming an unknown pool, or with a malformed
// annotation, stays ContainerCreating with berth-ipam's reason (naming the
// pod and the pool) in its events, and holds no claim.
func TestIPAM_BadInput(t *testing.T) {
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		want        string
	}{
		{name: "unknown pool", annotations: map[string]string{v1alpha1.AnnotationPool: "no-such-pool"},
			want: `pool no-such-pool: no IPPool "no-such-pool"`},
		{name: "malformed retain", annotations: map[string]string{v1alpha1.AnnotationRetain: "no"},
			want: `malformed annotation: berth.io/ip-retain: "no"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			ns := namespace(t, "e2e-ipam-bad")
			pod := testPod("bad", nil, "sleep", "3600")
			pod.Annotations = tc.annotations
			if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create pod: %v", err)
			}
			sandboxFailed(ctx, t, ns, pod.Name, tc.want)
			if p, err := client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{}); err != nil || !containerCreating(p) {
				t.Errorf("pod is not ContainerCreating: %v", err)
			}
			claims, err := claimsOf(ctx, ns)
			if err != nil || len(claims) != 0 {
				t.Errorf("the refused pod holds claims: %d, %v", len(claims), err)
			}
		})
	}
}

// sandboxFailed waits for the FailedCreatePodSandBox event of pod ns/name
// holding want, and checks that it names the pod and the plugin.
func sandboxFailed(ctx context.Context, t *testing.T, ns, name, want string) {
	t.Helper()
	msg := waitEvent(ctx, t, ns, name, "FailedCreatePodSandBox", want)
	if pod := fmt.Sprintf("pod %s/%s", ns, name); !strings.Contains(msg, pod) || !strings.Contains(msg, `plugin type="bridge"`) {
		t.Errorf("the event does not name %s and the bridge/berth-ipam plugin: %s", pod, msg)
	}
}

// waitEvent waits (at most 2 minutes) for an Event with reason on pod
// ns/name whose message contains want, and returns its message.
func waitEvent(ctx context.Context, t *testing.T, ns, name, reason, want string) string {
	t.Helper()
	var msg string
	err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		evs, err := client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			return false, nil
		}
		for _, e := range evs.Items {
			if e.Reason == reason && strings.Contains(e.Message, want) {
				msg = e.Message
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no %s event with %q:\n%s", reason, want, describe(ns, "pod/"+name))
	}
	t.Logf("event: %s", msg)
	return msg
}

// TestIPAM_PoolDeletion: a pool deleted while a pod holds one of its
// addresses stays (berth-controller's finalizer, condition Deleting naming
// the pod) and refuses new pods, and goes once that pod is gone.
func TestIPAM_PoolDeletion(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// The addresses deploy/local leaves for tests (10.244.0.240/28), on
	// the node's bridge subnet.
	const name = "e2e-deleted"
	pool := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.IPPoolSpec{
		CIDR: "10.244.0.0/24", Gateway: "10.244.0.1", IncludeRanges: []string{"10.244.0.240/30"},
		Routes: []v1alpha1.Route{{Destination: "0.0.0.0/0"}}}}
	if err := berth.Create(ctx, pool); err != nil {
		t.Fatalf("create pool: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = berth.Delete(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}})
	})
	waitPoolState := func(what string, ok func(p *v1alpha1.IPPool, err error) bool) *v1alpha1.IPPool {
		t.Helper()
		var p v1alpha1.IPPool
		var err error
		if werr := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			err = berth.Get(ctx, crclient.ObjectKey{Name: name}, &p)
			return ok(&p, err), nil
		}); werr != nil {
			t.Fatalf("pool %s: %s: not within 1m (get: %v; finalizers %v; status %+v)", name, what, err, p.Finalizers, p.Status)
		}
		return &p
	}
	waitPoolState("ready, with berth-controller's finalizer", func(p *v1alpha1.IPPool, err error) bool {
		return err == nil && slices.Contains(p.Finalizers, v1alpha1.FinalizerPoolInUse) &&
			meta.IsStatusConditionTrue(p.Status.Conditions, "Ready")
	})

	ns := namespace(t, "e2e-ipam-pool-deletion")
	holder := testPod("holder", nil, "sleep", "3600")
	holder.Annotations = map[string]string{v1alpha1.AnnotationPool: name}
	holder = createPodReady(t, ns, holder)
	if !strings.HasPrefix(holder.Status.PodIP, "10.244.0.24") {
		t.Fatalf("pod %s got %s, want an address of pool %s (10.244.0.240/30)", holder.Name, holder.Status.PodIP, name)
	}

	if err := berth.Delete(ctx, pool); err != nil {
		t.Fatalf("delete pool: %v", err)
	}
	p := waitPoolState("held by the pod, condition Deleting", func(p *v1alpha1.IPPool, err error) bool {
		cond := meta.FindStatusCondition(p.Status.Conditions, "Ready")
		return err == nil && p.DeletionTimestamp != nil && cond != nil && cond.Reason == "Deleting"
	})
	cond := meta.FindStatusCondition(p.Status.Conditions, "Ready")
	t.Logf("pool %s: %s", name, cond.Message)
	// berth-controller's gauges say the same.
	gauges := []string{fmt.Sprintf(`berth_controller_ippool_addresses{pool=%q,state="bound"} 1`, name),
		fmt.Sprintf(`berth_controller_ippool_addresses{pool=%q,state="size"} 4`, name),
		fmt.Sprintf(`berth_controller_ippool_condition{condition="Ready",pool=%q} 0`, name)}
	var metrics string
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		metrics = controllerMetrics(ctx, t)
		return !slices.ContainsFunc(gauges, func(g string) bool { return !strings.Contains(metrics, g) }), nil
	}); err != nil {
		t.Errorf("berth-controller's /metrics lacks %q within 30s; its pool series:\n%s", gauges, grepLines(metrics, "berth_controller_ippool_"))
	}
	if want := fmt.Sprintf("%s (pod %s/holder)", holder.Status.PodIP, ns); !strings.Contains(cond.Message, want) {
		t.Errorf("condition message %q does not name %s", cond.Message, want)
	}
	// kubectl shows it: READY False, and with -o wide the reason.
	if out, err := kubectlRun(ctx, "get", "ippool", name, "-o", "wide", "--no-headers"); err != nil ||
		!slices.Contains(strings.Fields(out), "False") || !slices.Contains(strings.Fields(out), "Deleting") {
		t.Errorf("kubectl get ippool %s -o wide: %q, %v; want READY False and REASON Deleting", name, out, err)
	}

	late := testPod("late", nil, "sleep", "3600")
	late.Annotations = map[string]string{v1alpha1.AnnotationPool: name}
	if _, err := client.CoreV1().Pods(ns).Create(ctx, late, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	sandboxFailed(ctx, t, ns, late.Name, "pool "+name+": the pool may not be used by this pod: it is being deleted")

	zero := int64(0)
	if err := client.CoreV1().Pods(ns).Delete(ctx, holder.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatalf("delete pod: %v", err)
	}
	waitPoolState("gone once the pod released its address", func(_ *v1alpha1.IPPool, err error) bool {
		return apierrors.IsNotFound(err)
	})
}

// TestIPAM_Prepared: the agent allocates a scheduled pod's address before
// kubelet's ADD (berth_agent_ipam_prepared_total{result="used"} counts the ADDs
// that found it), and the claim then records the pod's container.
func TestIPAM_Prepared(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := namespace(t, "e2e-ipam-prepared")
	agent := agentPod(ctx, t)
	before := metricValue(t, agentMetrics(ctx, t, agent), `berth_agent_ipam_prepared_total{result="used"}`)
	a := appSpec{name: "web", replicas: 2, grace: 1}
	createDeployment(ctx, t, ns, a)
	pods := readyPods(ctx, t, ns, a.name, 2, nil)
	checkClaims(ctx, t, ns, pods)
	metrics := agentMetrics(ctx, t, agent)
	used := metricValue(t, metrics, `berth_agent_ipam_prepared_total{result="used"}`) - before
	t.Logf("ADDs that found their pod's address prepared: %v of 2", used)
	if used < 1 {
		t.Errorf("no ADD of the 2 pods found its address prepared (berth_agent_ipam_prepared_total{result=\"used\"} +%v)\n%s", used, agentLogs(ctx, t, agent))
	}
	// The agent knew the pools before any ADD, from the node's CNI
	// configuration (/etc/cni/net.d/10-berth.conflist names "pods").
	if logs := agentLogs(ctx, t, agent); !slices.ContainsFunc(strings.Split(logs, "\n"), func(l string) bool {
		return strings.Contains(l, `msg="preparing addresses from the pools of the CNI configuration"`) && strings.Contains(l, "pools=[pods]")
	}) {
		t.Errorf("the agent did not read the pools of the CNI configuration at start\n%s", logs)
	}
	// Both claims record their container now (checkClaims), so the gauge
	// of pending recordings drops to 0 (pods of other tests may still be
	// starting: wait for it).
	const pending = "berth_agent_ipam_prepared_container_records_pending"
	if !strings.Contains(metrics, "\n"+pending+" ") {
		t.Fatalf("the agent does not export %s", pending)
	}
	var v float64
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		v = metricValue(t, agentMetrics(ctx, t, agent), pending)
		return v == 0, nil
	})
	if err != nil {
		t.Errorf("%s = %v 30 s after the claims recorded their containers, want 0\n%s", pending, v, agentLogs(ctx, t, agent))
	}
}

// metricValue returns the value of series (name and labels, as exposed)
// in a /metrics body, 0 if absent.
func metricValue(t *testing.T, body, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %q: %v", series, v, err)
			}
			return f
		}
	}
	return 0
}

// grepLines returns the lines of body that start with prefix.
func grepLines(body, prefix string) string {
	var out []string
	for line := range strings.Lines(body) {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}
