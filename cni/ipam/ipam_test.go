package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ktypes "k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam"
	"github.com/berth-io/berth/internal/ipalloc/ipalloctest"
	"github.com/berth-io/berth/test/netnstest"
	"github.com/berth-io/berth/test/poll"
)

var (
	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

// TestMain removes the build of pluginDir after the tests, and puts
// /run/netns back (netnstest).
func TestMain(m *testing.M) {
	code := netnstest.Run(m)
	if builtDir != "" {
		_ = os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// pluginDir builds berth-ipam (and berth-netcheck, which chains after it)
// once per test binary (TestMain removes them).
func pluginDir(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		builtDir, buildErr = os.MkdirTemp("", "berth-ipam-test-")
		if buildErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", builtDir, "./cmd/berth-ipam", "../netcheck/cmd/berth-netcheck").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/berth-ipam ../netcheck/cmd/berth-netcheck: %w: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtDir
}

// referencePlugins is where the local cluster's build put bridge.
func referencePlugins(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("BERTH_CNI_BIN"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	cache := os.Getenv("BERTH_CACHE")
	if cache == "" {
		cache = filepath.Join(home, ".cache", "berth")
	}
	d := filepath.Join(cache, "cni-plugins-v1.9.1", "bin")
	if _, err := os.Stat(filepath.Join(d, "bridge")); err != nil {
		t.Fatalf("bridge plugin: %v (run test/cluster/build.sh cni_plugins, or set BERTH_CNI_BIN)", err)
	}
	return d
}

type agent struct {
	store  *ipalloctest.Store
	sock   string
	queue  string
	cancel context.CancelFunc
	done   chan error
}

// startAgent runs the agent's IPAM server; deferRelease as berth-agent's
// --ipam-defer-release (true by default there).
func startAgent(t *testing.T, st *ipalloctest.Store, sock, queue string, deferRelease bool) *agent {
	t.Helper()
	srv, err := ipamserver.New(ipamserver.Config{SocketPath: sock, QueueDir: queue, AttachmentDir: filepath.Join(filepath.Dir(sock), "attachments"), Node: "n1", Store: st.View(false),
		DeferRelease: deferRelease, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{store: st, sock: sock, queue: queue, cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- srv.Start(ctx) }()
	poll.Until(t, 5*time.Second, "the agent to be ready", func() bool { return srv.Check(nil) == nil })
	t.Cleanup(a.stop)
	return a
}

func (a *agent) stop() {
	if a.cancel != nil {
		a.cancel()
		if err := <-a.done; err != nil {
			panic(err)
		}
		a.cancel = nil
	}
}

func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = n.Close()
		_ = testutils.UnmountNS(n)
	})
	return n
}

type chain struct {
	t    *testing.T
	host ns.NetNS
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
}

// newChain is bridge + berth-ipam, run from a stand-in host namespace.
func newChain(t *testing.T, sock, queue string) *chain {
	t.Helper()
	return newChainOf(t, fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "berth-test", "plugins": [
		{"type": "bridge", "bridge": "bipam0", "isGateway": true, "ipMasq": false,
		 "ipam": {"type": "berth-ipam", "socket": %q, "queueDir": %q, "timeout": "10s"}}]}`, sock, queue))
}

// newChainOf runs the network configuration list conf from a stand-in
// host namespace.
func newChainOf(t *testing.T, conf string) *chain {
	t.Helper()
	list, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	return &chain{t: t, host: newNS(t), list: list,
		cni: libcni.NewCNIConfigWithCacheDir([]string{pluginDir(t), referencePlugins(t)}, t.TempDir(), nil)}
}

func rt(id string, pod ns.NetNS, p *corev1.Pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: pod.Path(), IfName: "eth0", Args: [][2]string{
		{"IgnoreUnknown", "true"}, {"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.Name}, {"K8S_POD_UID", string(p.UID)},
		{"K8S_POD_INFRA_CONTAINER_ID", id}}}
}

func (c *chain) do(f func(ctx context.Context) error) error {
	var err error
	if e := c.host.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = f(ctx)
		return nil
	}); e != nil {
		c.t.Fatal(e)
	}
	return err
}

func (c *chain) add(r *libcni.RuntimeConf) (*types100.Result, error) {
	var res *types100.Result
	err := c.do(func(ctx context.Context) error {
		r0, err := c.cni.AddNetworkList(ctx, c.list, r)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r0)
		return err
	})
	return res, err
}

func (c *chain) del(r *libcni.RuntimeConf) error {
	return c.do(func(ctx context.Context) error { return c.cni.DelNetworkList(ctx, c.list, r) })
}

func addrsIn(t *testing.T, n ns.NetNS, link string) []string {
	t.Helper()
	return addrsOf(t, n, link, netlink.FAMILY_V4)
}

// addrsOf lists link's addresses of family in n, IPv6 link-local ones
// left out.
func addrsOf(t *testing.T, n ns.NetNS, link string, family int) []string {
	t.Helper()
	var out []string
	if err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(link)
		if err != nil {
			return err
		}
		as, err := netlink.AddrList(l, family)
		for _, a := range as {
			if !a.IP.IsLinkLocalUnicast() {
				out = append(out, a.IPNet.String())
			}
		}
		return err
	}); err != nil {
		t.Fatalf("addresses of %s: %v", link, err)
	}
	return out
}

// defaultGateway is the gateway of n's default route of family ("" if none).
func defaultGateway(t *testing.T, n ns.NetNS, family int) string {
	t.Helper()
	var gw string
	if err := n.Do(func(ns.NetNS) error {
		rs, err := netlink.RouteListFiltered(family, &netlink.Route{}, 0)
		for _, r := range rs {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw != nil {
				gw = r.Gw.String()
			}
		}
		return err
	}); err != nil {
		t.Fatalf("routes: %v", err)
	}
	return gw
}

func setup(t *testing.T) (*ipalloctest.Store, string, string) {
	st := ipalloctest.New()
	st.AddPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "pods"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.99.0.0/24", Gateway: "10.99.0.1",
		Routes: []v1alpha1.Route{{Destination: "0.0.0.0/0"}}}})
	dir := t.TempDir()
	return st, filepath.Join(dir, "ipam.sock"), filepath.Join(dir, "queue")
}

func deployPod(st *ipalloctest.Store, name string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: ktypes.UID("uid-" + name),
		OwnerReferences: []metav1.OwnerReference{{Kind: "StatefulSet", Name: "web", Controller: func() *bool { b := true; return &b }()}}}}
	st.SetPod(p)
	return p
}

// TestPlugin_bridge runs bridge + berth-ipam through libcni, the way
// containerd does, in real network namespaces: the pod gets the agent's
// address on eth0 and a default route via the bridge, CHECK and STATUS
// pass, DEL is idempotent, the address is reserved for the app and comes
// back to the next pod of the same ordinal; with the agent's DEL
// releasing before it answers and after (--ipam-defer-release).
func TestPlugin_bridge(t *testing.T) {
	for _, deferRelease := range []bool{false, true} {
		t.Run(fmt.Sprintf("deferRelease=%v", deferRelease), func(t *testing.T) { testBridge(t, deferRelease) })
	}
}

func testBridge(t *testing.T, deferRelease bool) {
	st, sock, queue := setup(t)
	startAgent(t, st, sock, queue, deferRelease)
	c := newChain(t, sock, queue)
	pod := newNS(t)
	p := deployPod(st, "web-0")
	r := rt("sandbox-1", pod, p)

	res, err := c.add(r)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if len(res.IPs) != 1 || res.IPs[0].Gateway.String() != "10.99.0.1" {
		t.Fatalf("result IPs %+v", res.IPs)
	}
	addr := res.IPs[0].Address.String()
	if got := addrsIn(t, pod, "eth0"); len(got) != 1 || got[0] != addr {
		t.Fatalf("eth0 in the pod has %v, want %s", got, addr)
	}
	if got := addrsIn(t, c.host, "bipam0"); len(got) != 1 || got[0] != "10.99.0.1/24" {
		t.Fatalf("bridge has %v, want the gateway 10.99.0.1/24", got)
	}
	if err := c.do(func(ctx context.Context) error { return c.cni.CheckNetworkList(ctx, c.list, r) }); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := c.do(func(ctx context.Context) error { return c.cni.GetStatusNetworkList(ctx, c.list) }); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	for i := range 2 {
		if err := c.del(r); err != nil {
			t.Fatalf("DEL %d: %v", i+1, err)
		}
	}
	// Deferred, the release follows the answer.
	poll.Until(t, 5*time.Second, "the claim to be Reserved after DEL", func() bool {
		claims := st.Claims()
		return len(claims) == 1 && claims[0].Spec.State == v1alpha1.ClaimReserved
	})
	poll.Until(t, 5*time.Second, "the queue directory to be empty", func() bool { left, _ := filepath.Glob(filepath.Join(queue, "*")); return len(left) == 0 })
	// web-0 comes back (a new pod, a new sandbox): same address.
	st.RemovePod("ns", "web-0")
	p2 := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-0", UID: "uid-web-0-b", OwnerReferences: p.OwnerReferences}}
	st.SetPod(p2)
	pod2 := newNS(t)
	res2, err := c.add(rt("sandbox-2", pod2, p2))
	if err != nil {
		t.Fatalf("ADD of the new web-0: %v", err)
	}
	if got := res2.IPs[0].Address.String(); got != addr {
		t.Fatalf("new web-0 got %s, want %s", got, addr)
	}
	if err := c.del(rt("sandbox-2", pod2, p2)); err != nil {
		t.Fatal(err)
	}
}

// TestPlugin_bridgeDualStack: a pod that names an IPv4 and an IPv6 pool
// gets one address of each through the bridge plugin in real network
// namespaces, with both gateways and default routes; DEL reserves both for
// its app, and the ordinal's next pod gets both back.
func TestPlugin_bridgeDualStack(t *testing.T) {
	st, sock, queue := setup(t)
	st.AddPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "pods6"}, Spec: v1alpha1.IPPoolSpec{CIDR: "fd99::/120", Gateway: "fd99::1",
		Routes: []v1alpha1.Route{{Destination: "::/0"}}}})
	startAgent(t, st, sock, queue, true)
	c := newChain(t, sock, queue)
	dual := func(p *corev1.Pod) *corev1.Pod {
		p.Annotations = map[string]string{v1alpha1.AnnotationPool: "pods,pods6"}
		st.SetPod(p)
		return p
	}
	p := dual(deployPod(st, "web-1"))
	pod := newNS(t)
	r := rt("sandbox-1", pod, p)

	res, err := c.add(r)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	var v4, v6 string
	for _, ip := range res.IPs {
		switch {
		case ip.Address.IP.To4() != nil && ip.Gateway.String() == "10.99.0.1":
			v4 = ip.Address.String()
		case ip.Address.IP.To4() == nil && ip.Gateway.String() == "fd99::1":
			v6 = ip.Address.String()
		}
	}
	if len(res.IPs) != 2 || v4 == "" || !strings.HasPrefix(v6, "fd99::") || !strings.HasSuffix(v6, "/120") {
		t.Fatalf("result IPs %+v: want one of 10.99.0.0/24 via 10.99.0.1 and one of fd99::/120 via fd99::1", res.IPs)
	}
	if got := addrsOf(t, pod, "eth0", netlink.FAMILY_V4); len(got) != 1 || got[0] != v4 {
		t.Errorf("eth0's IPv4 addresses %v, want %s", got, v4)
	}
	if got := addrsOf(t, pod, "eth0", netlink.FAMILY_V6); len(got) != 1 || got[0] != v6 {
		t.Errorf("eth0's IPv6 addresses %v, want %s", got, v6)
	}
	if got := addrsOf(t, c.host, "bipam0", netlink.FAMILY_V6); len(got) != 1 || got[0] != "fd99::1/120" {
		t.Errorf("bridge's IPv6 addresses %v, want the gateway fd99::1/120", got)
	}
	for family, want := range map[int]string{netlink.FAMILY_V4: "10.99.0.1", netlink.FAMILY_V6: "fd99::1"} {
		if got := defaultGateway(t, pod, family); got != want {
			t.Errorf("default route of family %d via %q, want %s", family, got, want)
		}
	}
	if err := c.do(func(ctx context.Context) error { return c.cni.CheckNetworkList(ctx, c.list, r) }); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := c.del(r); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	poll.Until(t, 5*time.Second, "both claims to be Reserved after DEL", func() bool {
		claims := st.Claims()
		return len(claims) == 2 && claims[0].Spec.State == v1alpha1.ClaimReserved && claims[1].Spec.State == v1alpha1.ClaimReserved
	})

	st.RemovePod("ns", "web-1")
	p2 := dual(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-1", UID: "uid-web-1-b", OwnerReferences: p.OwnerReferences}})
	pod2 := newNS(t)
	res2, err := c.add(rt("sandbox-2", pod2, p2))
	if err != nil {
		t.Fatalf("ADD of the new web-1: %v", err)
	}
	var got []string
	for _, ip := range res2.IPs {
		got = append(got, ip.Address.String())
	}
	if len(got) != 2 || !slices.Contains(got, v4) || !slices.Contains(got, v6) {
		t.Fatalf("new web-1 got %v, want %s and %s back", got, v4, v6)
	}
	if err := c.del(rt("sandbox-2", pod2, p2)); err != nil {
		t.Fatal(err)
	}
}

// TestPlugin_errors: a failed ADD names pod, pool and reason with the CNI
// error code, and with the runtime's DEL after it nothing is left.
func TestPlugin_errors(t *testing.T) {
	st, sock, queue := setup(t)
	startAgent(t, st, sock, queue, false)
	c := newChain(t, sock, queue)
	pod := newNS(t)
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "x", UID: "uid-x", Annotations: map[string]string{v1alpha1.AnnotationPool: "missing"}}}
	st.SetPod(p)
	_, err := c.add(rt("s1", pod, p))
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != 7 || ce.Error() != `berth-ipam ADD failed; pod ns/x, pool missing: no IPPool "missing" (from the pod annotation berth.io/ippool)` {
		t.Fatalf("ADD with an unknown pool: %v (%T)", err, err)
	}
	// The runtime follows a failed ADD with DEL, which must succeed and
	// leave nothing behind.
	if err := c.del(rt("s1", pod, p)); err != nil {
		t.Fatalf("DEL after a failed ADD: %v", err)
	}
	if err := pod.Do(func(ns.NetNS) error { _, err := netlink.LinkByName("eth0"); return err }); err == nil {
		t.Error("eth0 left in the pod after a failed ADD and its DEL")
	}
	if n := len(st.Claims()); n != 0 {
		t.Fatalf("%d claims leaked", n)
	}
}

// TestPlugin_agentDown: with the agent down ADD fails as retryable and
// STATUS as not available; DEL succeeds but is queued, the address stays
// claimed, and the agent releases it when it starts again.
func TestPlugin_agentDown(t *testing.T) {
	st, sock, queue := setup(t)
	a := startAgent(t, st, sock, queue, true)
	c := newChain(t, sock, queue)
	pod := newNS(t)
	p := deployPod(st, "web-1")
	r := rt("s1", pod, p)
	if _, err := c.add(r); err != nil {
		t.Fatal(err)
	}
	a.stop()

	var ce *types.Error
	if err := c.do(func(ctx context.Context) error { return c.cni.GetStatusNetworkList(ctx, c.list) }); !errors.As(err, &ce) || ce.Code != 50 {
		t.Fatalf("STATUS with the agent down: %v, want code 50", err)
	}
	other := deployPod(st, "web-2")
	if _, err := c.add(rt("s2", newNS(t), other)); !errors.As(err, &ce) || ce.Code != 11 || !strings.Contains(ce.Error(), "berth-agent is not reachable") {
		t.Fatalf("ADD with the agent down: %v, want code 11", err)
	}
	if err := c.del(r); err != nil {
		t.Fatalf("DEL with the agent down: %v", err)
	}
	if cl := st.Claims(); len(cl) != 1 || cl[0].Spec.State != v1alpha1.ClaimBound {
		t.Fatalf("claims while the DEL is queued: %+v, want still Bound", cl)
	}
	startAgent(t, st, sock, queue, true)
	if cl := st.Claims(); len(cl) != 1 || cl[0].Spec.State != v1alpha1.ClaimReserved {
		t.Fatalf("claims after the agent drained its queue: %+v, want Reserved", cl)
	}
	if left, _ := filepath.Glob(filepath.Join(queue, "*")); len(left) != 0 {
		t.Fatalf("queue not drained: %v", left)
	}
}

// TestPlugin_underlay runs the underlay configuration of the README
// (berth-ipam under macvlan, a pool carved out of the segment with the
// router as gateway) in real network namespaces, a veth standing in for
// the node's eth1: the pod gets an address of the pool's included range on
// its macvlan interface with a default route via the router, the claim
// names the network, and the ordinal's next pod gets the address back
// after DEL. (ipvlan, the README's other underlay, cannot run here: this
// machine's kernel is built without CONFIG_IPVLAN.)
func TestPlugin_underlay(t *testing.T) {
	st, sock, queue := setup(t)
	st.AddPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "vlan20"}, Spec: v1alpha1.IPPoolSpec{CIDR: "192.168.20.0/24",
		Gateway: "192.168.20.1", IncludeRanges: []string{"192.168.20.100-192.168.20.199"}, Routes: []v1alpha1.Route{{Destination: "0.0.0.0/0"}}}})
	startAgent(t, st, sock, queue, true)
	c := newChainOf(t, fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "underlay", "plugins": [
		{"type": "macvlan", "master": "under0", "mode": "bridge", "ipam": {"type": "berth-ipam", "pools": ["vlan20"], "socket": %q, "queueDir": %q, "timeout": "10s"}}]}`, sock, queue))
	if err := c.host.Do(func(ns.NetNS) error {
		// A veth (this kernel has no dummy links); its peer stays unplugged.
		under := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "under0"}, PeerName: "under0-peer"}
		if err := netlink.LinkAdd(under); err != nil {
			return err
		}
		return netlink.LinkSetUp(under)
	}); err != nil {
		t.Fatalf("the stand-in uplink: %v", err)
	}

	var addr string
	for i, uid := range []string{"uid-web-0", "uid-web-0-b"} {
		pod := newNS(t)
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-0", UID: ktypes.UID(uid),
			OwnerReferences: []metav1.OwnerReference{{Kind: "StatefulSet", Name: "web", Controller: func() *bool { b := true; return &b }()}}}}
		st.SetPod(p)
		r := rt(fmt.Sprintf("sandbox-%d", i), pod, p)
		res, err := c.add(r)
		if err != nil {
			t.Fatalf("ADD %d: %v", i, err)
		}
		got := addrsIn(t, pod, "eth0")
		if len(got) != 1 || len(res.IPs) != 1 || got[0] != res.IPs[0].Address.String() {
			t.Fatalf("ADD %d: eth0 in the pod has %v, the result %+v", i, got, res.IPs)
		}
		a := netip.MustParsePrefix(got[0])
		if lo, hi := netip.MustParseAddr("192.168.20.100"), netip.MustParseAddr("192.168.20.199"); a.Bits() != 24 || a.Addr().Less(lo) || hi.Less(a.Addr()) {
			t.Fatalf("ADD %d: %s, want one of 192.168.20.100-199/24", i, a)
		}
		if gw := defaultGateway(t, pod, netlink.FAMILY_V4); gw != "192.168.20.1" {
			t.Fatalf("ADD %d: default route via %q, want the router 192.168.20.1", i, gw)
		}
		if cl := st.Claims(); len(cl) != 1 || cl[0].Spec.Pool != "vlan20" || cl[0].Spec.Network != "underlay" {
			t.Fatalf("ADD %d: claims %+v, want one of pool vlan20, network underlay", i, cl)
		}
		if addr != "" && got[0] != addr {
			t.Fatalf("the ordinal's next pod got %s, want its %s back", got[0], addr)
		}
		addr = got[0]
		if err := c.del(r); err != nil {
			t.Fatalf("DEL %d: %v", i, err)
		}
		poll.Until(t, 5*time.Second, "the claim to be Reserved after DEL", func() bool {
			cl := st.Claims()
			return len(cl) == 1 && cl[0].Spec.State == v1alpha1.ClaimReserved
		})
		st.RemovePod("ns", "web-0")
	}
}

// TestPlugin_GC runs berth-ipam's GC the way a main plugin forwards it to
// its IPAM (invoke.DelegateGC; bridge and macvlan v1.9.1 do not forward it
// yet, containerd 2.2 sends none): berth-ipam names the network from its
// configuration, ADD records it on the claim, and GC of another network
// leaves the claim bound while GC of its own releases it.
func TestPlugin_GC(t *testing.T) {
	st, sock, queue := setup(t)
	a := startAgent(t, st, sock, queue, true)
	c := newChain(t, sock, queue)
	p := deployPod(st, "web-0")
	if _, err := c.add(rt("sandbox-1", newNS(t), p)); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if cl := st.Claims(); len(cl) != 1 || cl[0].Spec.Network != "berth-test" {
		t.Fatalf("claims after ADD: %+v, want one of network berth-test", cl)
	}
	// The ADD ended long ago (GC keeps off recent ones).
	a.stop()
	records, err := filepath.Glob(filepath.Join(filepath.Dir(sock), "attachments", "*.json"))
	if err != nil || len(records) != 1 {
		t.Fatalf("attachment records %v, %v; want 1", records, err)
	}
	if err := os.Chtimes(records[0], time.Now().Add(-time.Hour), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	startAgent(t, st, sock, queue, true)

	t.Setenv("CNI_PATH", pluginDir(t))
	gc := func(network string) {
		t.Helper()
		conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q, "type": "bridge", "cni.dev/valid-attachments": [],
			"ipam": {"type": "berth-ipam", "socket": %q, "queueDir": %q}}`, network, sock, queue)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := invoke.DelegateGC(ctx, "berth-ipam", []byte(conf), nil); err != nil {
			t.Fatalf("GC of network %s: %v", network, err)
		}
	}
	gc("underlay")
	if cl := st.Claims(); len(cl) != 1 || cl[0].Spec.State != v1alpha1.ClaimBound || cl[0].Spec.ContainerID != "sandbox-1" {
		t.Fatalf("claims after GC of another network: %+v, want still Bound to sandbox-1", cl)
	}
	gc("berth-test")
	if cl := st.Claims(); len(cl) != 1 || cl[0].Spec.State != v1alpha1.ClaimReserved {
		t.Fatalf("claims after GC of its network: %+v, want Reserved for the app", cl)
	}
}

func TestLoadConfig(t *testing.T) {
	for _, tc := range []struct {
		name, ipam, err string
	}{
		{name: "defaults", ipam: `{"type":"berth-ipam"}`},
		{name: "unknown field", ipam: `{"type":"berth-ipam","pool":"x"}`, err: `ipam configuration: json: unknown field "pool"`},
		{name: "relative socket", ipam: `{"type":"berth-ipam","socket":"ipam.sock"}`, err: `ipam configuration: socket "ipam.sock" and queueDir "/run/berth/ipam-del-queue" must be absolute paths`},
		{name: "bad timeout", ipam: `{"type":"berth-ipam","timeout":"soon"}`, err: `ipam configuration: timeout "soon": want a positive Go duration such as 30s`},
		{name: "three pools", ipam: `{"type":"berth-ipam","pools":["a","b","c"]}`, err: "ipam configuration: pools [a b c]: at most two (one per IP family)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, c, err := ipam.LoadConfig([]byte(`{"cniVersion":"1.1.0","name":"n","type":"bridge","ipam":` + tc.ipam + `}`))
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("err = %v, want %s", err, tc.err)
				}
				return
			}
			if err != nil || c.Socket != "/run/berth/ipam.sock" {
				t.Fatalf("%+v %v", c, err)
			}
		})
	}
}
