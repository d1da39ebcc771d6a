package chaos_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/internal/cachetrim"
	"github.com/berth-io/berth/test/poll"
	"github.com/berth-io/berth/test/runnable"
)

// TestFault_poolsOverlapWhileAgentsLag_blindCaches: two IPPools with the
// same 14 addresses exist (admitted at the same moment, or older than the
// admission policy, which is not installed here), and the agents of two
// nodes lag: node-a's informer cache never sees pool right nor its claims,
// node-b's never sees pool left nor its claims (informers with a selector
// stand in for a lag that lasts the whole test). 10 pods on each node,
// each asking for its node's pool, ADD at once over the agents' sockets,
// retrying failures as kubelet does (until the pools are used up). No address is given to two pods;
// the pools' 14 addresses all end up used; the API server keeps one
// claim per address at most, each that of the pod given the address; and
// after every pod's DEL no claim is left.
func TestFault_poolsOverlapWhileAgentsLag_blindCaches(t *testing.T) {
	const podsPerNode, poolSize, tries = 10, 14, 40
	a := startAPI(t)
	cfg, scheme, c := a.cfg, a.scheme, a.client
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	create := func(obj client.Object) { t.Helper(); a.create(ctx, t, obj) }
	create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}})
	nodePool := map[string]string{"node-a": "left", "node-b": "right"}
	for _, pool := range nodePool {
		create(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: pool}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.60.0.0/28"}})
	}

	socks := map[string]string{}
	for node, pool := range nodePool {
		mgr, err := manager.New(cfg, manager.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
			Cache: cachetrim.Options(cache.Options{ByObject: map[client.Object]cache.ByObject{
				&v1alpha1.IPPool{}:  {Field: fields.OneTermEqualSelector("metadata.name", pool)},
				&v1alpha1.IPClaim{}: {Label: labels.SelectorFromSet(labels.Set{v1alpha1.LabelPool: pool})},
			}})})
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		socks[node] = filepath.Join(dir, "ipam.sock")
		srv, err := ipamserver.NewForManager(ctx, mgr, ipamserver.Config{SocketPath: socks[node], QueueDir: filepath.Join(dir, "queue"),
			AttachmentDir: filepath.Join(dir, "attachments"), Node: node, Registerer: prometheus.NewRegistry(),
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		if err := mgr.Add(srv); err != nil {
			t.Fatal(err)
		}
		runnable.Start(t, time.Minute, mgr.Start)
		poll.Until(t, 30*time.Second, "the agent of "+node+" to serve its socket", func() bool { return srv.Check(nil) == nil })
	}

	type podOn struct {
		pod  *corev1.Pod
		node string
	}
	var pods []podOn
	for node, pool := range nodePool {
		for i := range podsPerNode {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: fmt.Sprintf("%s-%d", pool, i),
				Annotations: map[string]string{v1alpha1.AnnotationPool: pool}},
				Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
			create(p)
			pods = append(pods, podOn{p, node})
		}
	}

	var (
		mu     sync.Mutex
		holder = map[string]string{} // address -> pod given it
		errs   []string
		wg     sync.WaitGroup
		start  = make(chan struct{})
	)
	for _, po := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			req := protocol.Request{ContainerID: "ctr-" + po.pod.Name, IfName: "eth0", PodNamespace: "shop", PodName: po.pod.Name,
				PodUID: string(po.pod.UID)}
			for try := 0; try < tries; try++ {
				resp, err := ipamCall(ctx, socks[po.node], protocol.CommandAdd, req)
				if err == nil && resp.Error == nil && len(resp.IPs) == 1 {
					addr := netip.MustParsePrefix(resp.IPs[0].Address).Addr().String()
					mu.Lock()
					if h, ok := holder[addr]; ok {
						errs = append(errs, fmt.Sprintf("DUPLICATE: %s on %s got %s (pool %s), given to %s already", po.pod.Name, po.node, addr, resp.IPs[0].Pool, h))
					}
					holder[addr] = po.pod.Name
					mu.Unlock()
					return
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Sprintf("ADD %s: %v", po.pod.Name, err))
					mu.Unlock()
					return
				}
				// A failed ADD: the runtime DELs the container and kubelet
				// tries again.
				if _, err := ipamCall(ctx, socks[po.node], protocol.CommandDel, req); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Sprintf("DEL %s after a failed ADD: %v", po.pod.Name, err))
					mu.Unlock()
					return
				}
				mu.Lock()
				full := len(holder) == poolSize
				mu.Unlock()
				if full {
					return // the pod waits for an address in vain
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	began := time.Now()
	close(start)
	wg.Wait()
	t.Logf("%d pods' ADDs (with retries) in %s", len(pods), time.Since(began).Round(time.Millisecond))
	for _, e := range errs {
		t.Error(e)
	}
	if len(holder) != poolSize {
		t.Errorf("%d addresses given, want all %d of the pools' (%d pods asked)", len(holder), poolSize, len(pods))
	}

	var claims v1alpha1.IPClaimList
	if err := c.List(ctx, &claims); err != nil {
		t.Fatal(err)
	}
	byAddr := map[string][]string{}
	for _, cl := range claims.Items {
		byAddr[cl.Spec.Address] = append(byAddr[cl.Spec.Address], cl.Name+" ("+string(cl.Spec.State)+")")
		if h := holder[cl.Spec.Address]; h != cl.Spec.Pod.Name {
			t.Errorf("claim %s is pod %s's, but its address was given to %q", cl.Name, cl.Spec.Pod.Name, h)
		}
	}
	for addr, names := range byAddr {
		if len(names) > 1 {
			t.Errorf("%d claims of %s: %s", len(names), addr, strings.Join(names, ", "))
		}
	}

	for _, po := range pods {
		req := protocol.Request{ContainerID: "ctr-" + po.pod.Name, IfName: "eth0", PodNamespace: "shop", PodName: po.pod.Name, PodUID: string(po.pod.UID)}
		if resp, err := ipamCall(ctx, socks[po.node], protocol.CommandDel, req); err != nil || resp.Error != nil {
			t.Errorf("DEL %s: %+v, %v", po.pod.Name, resp, err)
		}
	}
	if err := c.List(ctx, &claims); err != nil {
		t.Fatal(err)
	}
	for _, cl := range claims.Items {
		t.Errorf("claim %s (%s, pod %s) left after every pod's DEL", cl.Name, cl.Spec.State, cl.Spec.Pod.Name)
	}
}

// ipamCall sends one berth-ipam request to the agent's socket.
func ipamCall(ctx context.Context, sock, command string, req protocol.Request) (*protocol.Response, error) {
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://berth/v1/"+command, strings.NewReader(string(body)))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out protocol.Response
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("%s: decode the answer: %w", command, err)
	}
	return &out, nil
}
