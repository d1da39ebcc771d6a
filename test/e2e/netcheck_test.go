//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/ipalloc"
)

// The node's CNI chain as test/cluster/cluster.sh writes it: bridge cni0
// with berth-ipam (pool "pods", the node's pod subnet), then berth-netcheck.
const (
	nodeConflist = "/etc/cni/net.d/10-berth.conflist"
	podBridge    = "cni0"
	installedBin = "/opt/cni/bin/berth-netcheck"
	plantNetNS   = "berth-e2e-netcheck"
	plantVeth    = "bnce2e0"
)

// TestNetcheck_Conflict: a pod runs through the chain with berth-netcheck;
// with every address berth-ipam could hand out of a pool planted on the pod
// bridge by a namespace of the test, a new pod stays ContainerCreating, its
// events naming the planted MAC as berth-netcheck's conflict; once the
// addresses are gone it runs, and reaches its gateway. berth-netcheck
// tells berth-agent of each conflict: the pod gets a Warning Event
// AddressConflict and the address's claim is in state Conflict, so each
// retry gets another address. For IPv4 (pool "pods"), and for IPv6 with
// dual-stack pods (pool "pods6": ARP probes find the one conflict, NDP the
// other).
func TestNetcheck_Conflict(t *testing.T) {
	conf, err := os.ReadFile(nodeConflist)
	if err != nil || !strings.Contains(string(conf), `"berth-netcheck"`) {
		t.Fatalf("the node's CNI chain %s does not hold berth-netcheck (%v):\n%s", nodeConflist, err, conf)
	}
	if fi, err := os.Stat(installedBin); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("the Berth DaemonSet did not install %s with mode 0755: %v, %v", installedBin, fi, err)
	}

	for _, tc := range []struct {
		name, pool, gateway string
		annotations         map[string]string
	}{
		{name: "ipv4", pool: podPool, gateway: "10.244.0.1"},
		{name: "ipv6", pool: podPool6, gateway: "fd42:10:244::1", annotations: dualStack()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conflict(t, tc.pool, tc.gateway, tc.annotations)
		})
	}
}

// conflict is TestNetcheck_Conflict with the free addresses of pool
// planted, for pods with annotations.
func conflict(t *testing.T, pool, gateway string, annotations map[string]string) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	// A healthy pod passes the check (and makes sure the bridge exists,
	// with the gateway).
	ns := namespace(t, "e2e-netcheck")
	healthy := testPod("healthy", nil, "sleep", "3600")
	healthy.Annotations = annotations
	createPodReady(t, ns, healthy)

	mac, planted := plantFreeAddresses(ctx, t, pool)
	t.Logf("planted %d free addresses of pool %s at %s", len(planted), pool, mac)

	pod := testPod("conflict", nil, "sleep", "3600")
	pod.Annotations = annotations
	created, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod: %v", err)
	}
	// The addresses quarantined after the conflicts would stay out of use
	// for the agent's --ipam-conflict-quarantine (1h): end it.
	t.Cleanup(func() { endQuarantines(t, pool, created.UID) })

	// The sandbox fails with the conflict, and again on kubelet's retry
	// (berth-ipam hands out another free address, planted too).
	want := fmt.Sprintf("on eth0 is already in use by %s", mac)
	var event string
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		evs, err := client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		failures := int32(0)
		for _, e := range evs.Items {
			if e.InvolvedObject.Name == pod.Name && e.Reason == "FailedCreatePodSandBox" && strings.Contains(e.Message, want) {
				event = e.Message
				failures += max(e.Count, 1)
			}
		}
		return failures >= 2, nil
	})
	if err != nil {
		t.Fatalf("not two FailedCreatePodSandBox events with %q:\n%s", want, describe(ns, "pod/"+pod.Name))
	}
	t.Logf("event: %s", event)
	if m := regexp.MustCompile(`IP (\S+) on eth0 is already in use`).FindStringSubmatch(event); m == nil ||
		!slices.ContainsFunc(planted, func(a netip.Addr) bool { return a.String() == m[1] }) {
		t.Errorf("the event does not name a planted address of pool %s: %s", pool, event)
	}
	if !strings.Contains(event, `plugin type="berth-netcheck"`) {
		t.Errorf("the event does not name berth-netcheck: %s", event)
	}
	if !strings.Contains(event, "berth-agent took the address out of use: the pod's next ADD gets another address") {
		t.Errorf("the event does not say berth-agent took the address: %s", event)
	}
	// berth-agent's own Event, and the claims it quarantined.
	evs, err := client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(evs.Items, func(e corev1.Event) bool {
		return e.InvolvedObject.Name == pod.Name && e.Type == corev1.EventTypeWarning && e.Reason == "AddressConflict" &&
			strings.Contains(e.Message, "is already in use by "+mac.String()) && strings.Contains(e.Message, "the next attempt gets another address")
	}) {
		t.Errorf("no Warning Event AddressConflict naming %s on the pod:\n%s", mac, describe(ns, "pod/"+pod.Name))
	}
	if q := quarantined(ctx, t, pool, created.UID); len(q) < 2 {
		t.Errorf("claims of pool %s in state Conflict for the pod: %v, want one per failed sandbox (at least 2)", pool, q)
	}
	p, err := client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !containerCreating(p) {
		t.Errorf("pod is %s, want Pending and ContainerCreating: %+v", p.Status.Phase, p.Status.ContainerStatuses)
	}
	if d := describe(ns, "pod/"+pod.Name); !strings.Contains(d, want) {
		t.Errorf("kubectl describe lacks %q:\n%s", want, d)
	}

	// Remove the conflict: kubelet's next retry gets a working address.
	if _, err := run(ctx, "ip", "netns", "del", plantNetNS); err != nil {
		t.Fatalf("remove the planted addresses: %v", err)
	}
	ready, err := waitPod(ctx, ns, pod.Name, podReady)
	if err != nil {
		t.Fatalf("pod not ready after the conflict went: %v\n%s", err, describe(ns, "pod/"+pod.Name))
	}
	t.Logf("pod runs at %v", podIPs(ready))
	out, err := kubectlRun(ctx, "-n", ns, "exec", pod.Name, "--", "ping", "-c", "1", "-W", "5", gateway)
	if err != nil {
		t.Errorf("the pod does not reach its gateway: %v\n%s", err, out)
	}
}

// quarantined lists the addresses of pool in state Conflict that pod uid
// met.
func quarantined(ctx context.Context, t *testing.T, pool string, uid types.UID) []string {
	t.Helper()
	var claims v1alpha1.IPClaimList
	if err := berth.List(ctx, &claims, crclient.MatchingLabels{v1alpha1.LabelPool: pool}); err != nil {
		t.Fatalf("IPClaims: %v", err)
	}
	var out []string
	for _, c := range claims.Items {
		if c.Spec.State == v1alpha1.ClaimConflict && c.Spec.Pod.UID == uid {
			out = append(out, c.Spec.Address)
		}
	}
	return out
}

// endQuarantines deletes pool's Conflict claims that pod uid met, as an
// operator ends a quarantine early (docs/ipam-operations.md).
func endQuarantines(t *testing.T, pool string, uid types.UID) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var claims v1alpha1.IPClaimList
	if err := berth.List(ctx, &claims, crclient.MatchingLabels{v1alpha1.LabelPool: pool}); err != nil {
		t.Errorf("IPClaims: %v", err)
		return
	}
	for i := range claims.Items {
		c := &claims.Items[i]
		if c.Spec.State == v1alpha1.ClaimConflict && c.Spec.Pod.UID == uid {
			if err := berth.Delete(ctx, c); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("end the quarantine of %s: %v", c.Name, err)
			}
		}
	}
}

// containerCreating reports whether p is Pending with its container still
// being created (or not reported yet).
func containerCreating(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodPending {
		return false
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w == nil || w.Reason != "ContainerCreating" {
			return false
		}
	}
	return true
}

// plantFreeAddresses makes a namespace joined to the pod bridge by a veth
// and puts on it every address of pool poolName that has no IPClaim (IPv6
// without duplicate address detection), so whatever address of the pool
// the next pod gets is in use. The test's cleanup removes it.
func plantFreeAddresses(ctx context.Context, t *testing.T, poolName string) (net.HardwareAddr, []netip.Addr) {
	t.Helper()
	var ipp v1alpha1.IPPool
	if err := berth.Get(ctx, crclient.ObjectKey{Name: poolName}, &ipp); err != nil {
		t.Fatalf("IPPool %s: %v", poolName, err)
	}
	pool, err := ipalloc.ParsePool(&ipp)
	if err != nil {
		t.Fatalf("IPPool %s: %v", poolName, err)
	}
	var claims v1alpha1.IPClaimList
	if err := berth.List(ctx, &claims, crclient.MatchingLabels{v1alpha1.LabelPool: poolName}); err != nil {
		t.Fatalf("IPClaims: %v", err)
	}
	taken := map[netip.Addr]bool{}
	for _, c := range claims.Items {
		if a, err := netip.ParseAddr(c.Spec.Address); err == nil {
			taken[a] = true
		}
	}
	var free []netip.Addr
	for i := range pool.Size() {
		if a := pool.At(i); !taken[a] {
			free = append(free, a)
		}
	}

	_, _ = run(ctx, "ip", "netns", "del", plantNetNS) // a leftover of a killed run
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = run(ctx, "ip", "netns", "del", plantNetNS) // the veth goes with it
		if _, err := run(ctx, "ip", "link", "show", plantVeth); err == nil {
			t.Errorf("veth %s still exists", plantVeth)
		}
	})
	for _, args := range [][]string{
		{"netns", "add", plantNetNS},
		{"link", "add", plantVeth, "type", "veth", "peer", "name", "eth0", "netns", plantNetNS},
		{"link", "set", plantVeth, "master", podBridge, "up"},
		{"-n", plantNetNS, "link", "set", "eth0", "up"},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			t.Fatalf("plant: %v", err)
		}
	}
	batch := filepath.Join(t.TempDir(), "addrs")
	var b strings.Builder
	for _, a := range free {
		nodad := ""
		if a.Is6() {
			nodad = " nodad"
		}
		fmt.Fprintf(&b, "addr add %s/%d dev eth0%s\n", a, pool.Prefix.Bits(), nodad)
	}
	if err := os.WriteFile(batch, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := run(ctx, "ip", "-n", plantNetNS, "-batch", batch); err != nil {
		t.Fatalf("plant addresses: %v", err)
	}
	ifc, err := run(ctx, "ip", "-n", plantNetNS, "-br", "link", "show", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(ifc)
	if len(fields) < 3 {
		t.Fatalf("ip -br link: %q", ifc)
	}
	mac, err := net.ParseMAC(fields[2])
	if err != nil {
		t.Fatalf("MAC of the planted interface: %v", err)
	}
	return mac, free
}
