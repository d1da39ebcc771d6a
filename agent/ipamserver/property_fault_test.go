package ipamserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/berth-io/berth/agent/crisandbox"
	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/controller/ipclaimgc"
	"github.com/berth-io/berth/internal/agentlease"
	"github.com/berth-io/berth/internal/ipalloc"
	"github.com/berth-io/berth/internal/ipalloc/ipalloctest"
	"github.com/berth-io/berth/test/poll"
	"github.com/berth-io/berth/test/promtest"
)

// errKilled is what the store of an agent that was killed answers: the
// create that killed it (it landed), and every write after (none lands).
var errKilled = fmt.Errorf("the agent was killed: %w", errUnreachable)

// hasSandbox says whether the pod has a sandbox in the runtime: one whose
// ADD succeeded and that is not torn down, whatever its pod object.
func (p *propPod) hasSandbox() bool {
	return p.container != "" && (p.state == "running" || p.state == "terminating" || p.state == "forced")
}

// ageRecords makes the attachment records in dir an hour old: the ADDs
// they record look older than GC's grace to the next agent.
func ageRecords(t *testing.T, dir string) {
	t.Helper()
	records, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	old := time.Now().Add(-time.Hour)
	for _, f := range records {
		if err := os.Chtimes(f, old, old); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("age %s: %v", f, err)
		}
	}
}

// faultModel extends propModel with what issue 22's fault suite asks of
// it: berth-controller's IP claim GC (the real Reconciler, over the same
// in-memory API server), force deletes, nodes rebooting (their sandboxes
// lost without DEL, /run cleared), agents killed after a claim create
// landed and before they answered, berth-ipam timing out before the agent
// answers, and each agent sweeping its node's claims against the
// runtime's sandboxes.
type faultModel struct {
	m    *propModel
	seed uint64
	// ignoreLease makes berth-controller act as if no agent had a lease
	// (an agent that never wrote one): it then reserves or frees a claim
	// the moment its pod object is gone. Only to show that the holder
	// invariant catches it.
	ignoreLease              bool
	slowPercent, killPercent int
	draining                 atomic.Bool
	// gcMaxShare is the agents' GCMaxShare (0: the default); the drain
	// raises it after a refused sweep, as the refusal's Event says to.
	gcMaxShare float64

	ctrlMu   sync.Mutex
	gc       *ipclaimgc.Reconciler
	ctrlView *ipalloctest.View // berth-controller's cache

	kills, forced, forcedSilent, timeouts, reboots, refused atomic.Int32
	ctrlRuns, ctrlDeferred, ctrlActed                       atomic.Int32
}

func newFaultModel(m *propModel, seed uint64) *faultModel {
	f := &faultModel{m: m, seed: seed, slowPercent: 10, killPercent: 8, ctrlView: m.store.View(true)}
	gc, err := ipclaimgc.New(&storeClient{f: f}, ipclaimgc.Config{Leases: leaseReader{f}})
	if err != nil {
		m.t.Fatal(err)
	}
	f.gc = gc
	m.fault = f
	return f
}

// configure adds the fault model's parts to n's agent's configuration:
// the runtime's sandboxes to sweep against, slow writes and kills while
// the API server is lossy (percent > 0).
func (f *faultModel) configure(n *propNode, cfg *ipamserver.Config, percent int) {
	n.lossy.kills = &f.kills
	if percent > 0 {
		n.lossy.slowPercent, n.lossy.killPercent = f.slowPercent, f.killPercent
	}
	cfg.Sandboxes, cfg.SweepInterval, cfg.GCMaxShare = sandboxLister{m: f.m, n: n}, 20*time.Millisecond, f.gcMaxShare
	// A call that waits on the work of an agent killed meanwhile (its
	// pending writes never land) ends within this, and the agent restarts.
	cfg.RequestTimeout = 10 * time.Second
}

func (f *faultModel) percent() int {
	if f.draining.Load() {
		return 0
	}
	return propFailPercent
}

// reviveKilled restarts n's agent if a create killed it: the process
// restarts, as berth-agent's container does (reviveEvery).
func (f *faultModel) reviveKilled(n *propNode) {
	n.mu.RLock()
	dead := n.lossy.dead.Load()
	n.mu.RUnlock()
	if dead {
		f.m.restartIf(n, f.seed, f.percent(), false, func() bool { return n.lossy.dead.Load() })
	}
}

// reviveEvery revives the killed agents every d until ctx ends.
func (f *faultModel) reviveEvery(ctx context.Context, d time.Duration) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		for _, n := range f.m.nodes {
			f.reviveKilled(n)
		}
	}
}

// sandboxLister is the runtime of node n (its CRI ListPodSandbox): the
// sandboxes whose ADD succeeded and that are not torn down, whatever
// their pods' objects. A sandbox whose ADD runs is not listed yet, as
// containerd lists a sandbox once its network is set up: GC's grace
// keeps off those.
type sandboxLister struct {
	m *propModel
	n *propNode
}

func (l sandboxLister) List(context.Context) ([]crisandbox.Sandbox, error) {
	l.m.mu.Lock()
	defer l.m.mu.Unlock()
	var out []crisandbox.Sandbox
	for _, p := range l.m.pods {
		if p.node == l.n && p.hasSandbox() {
			out = append(out, crisandbox.Sandbox{ID: p.container, PodUID: p.pod.UID, Ready: true})
		}
	}
	return out, nil
}

// leaseReader is the agents' leases as berth-controller reads them: each
// agent renews its own while it runs (renewed now), and a node's agent
// that is silent (its node down) renewed an hour ago, past the
// controller's grace period.
type leaseReader struct{ f *faultModel }

func (l leaseReader) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	lease, ok := obj.(*coordinationv1.Lease)
	if !ok {
		return fmt.Errorf("lease reader: %T", obj)
	}
	for _, n := range l.f.m.nodes {
		if agentlease.Name(n.name) != key.Name || l.f.ignoreLease {
			continue
		}
		renewed := time.Now()
		if n.silent.Load() {
			renewed = renewed.Add(-time.Hour)
		}
		*lease = coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name},
			Spec: coordinationv1.LeaseSpec{RenewTime: &metav1.MicroTime{Time: renewed}}}
		return nil
	}
	return apierrors.NewNotFound(coordinationv1.Resource("leases"), key.Name)
}

func (leaseReader) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return errors.New("lease reader: list is not supported")
}

// storeClient is berth-controller's client over the in-memory API server
// (ipamtest): claims read from a lagging cache and written at their
// resourceVersion as the API server does (an update leaves the status,
// a status update the rest), pods and pools as the store has them, the
// model's nodes, and every app existing (reservations end at their TTL).
// It implements what the Reconciler calls (Get, Update, Delete,
// Status().Update); the rest of client.Client is nil and panics.
type storeClient struct {
	client.Client
	f *faultModel
}

var claimsResource = schema.GroupResource{Group: v1alpha1.GroupVersion.Group, Resource: "ipclaims"}

// apiError maps the store's errors to the API server's.
func apiError(name string, err error) error {
	switch {
	case errors.Is(err, ipalloc.ErrNotFound):
		return apierrors.NewNotFound(claimsResource, name)
	case errors.Is(err, ipalloc.ErrConflict):
		return apierrors.NewConflict(claimsResource, name, err)
	}
	return err
}

func (c *storeClient) live(name string) (*v1alpha1.IPClaim, error) {
	cur, err := c.f.m.store.View(false).Claim(name)
	if err != nil {
		return nil, apiError(name, err)
	}
	return cur.DeepCopy(), nil
}

func (c *storeClient) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	v := c.f.ctrlView
	switch o := obj.(type) {
	case *v1alpha1.IPClaim:
		cl, err := v.Claim(key.Name)
		if err != nil {
			return apiError(key.Name, err)
		}
		cl.DeepCopyInto(o)
	case *corev1.Pod:
		p, err := v.Pod(key.Namespace, key.Name)
		if err != nil {
			return apierrors.NewNotFound(corev1.Resource("pods"), key.Name)
		}
		p.DeepCopyInto(o)
	case *v1alpha1.IPPool:
		p, err := v.Pool(key.Name)
		if err != nil {
			return apierrors.NewNotFound(v1alpha1.GroupVersion.WithResource("ippools").GroupResource(), key.Name)
		}
		p.DeepCopyInto(o)
	case *corev1.Node:
		for _, n := range c.f.m.nodes {
			if n.name == key.Name {
				*o = corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}}
				return nil
			}
		}
		return apierrors.NewNotFound(corev1.Resource("nodes"), key.Name)
	case *appsv1.StatefulSet, *appsv1.ReplicaSet, *appsv1.Deployment:
		o.SetNamespace(key.Namespace)
		o.SetName(key.Name)
	default:
		return fmt.Errorf("store client: get %T", obj)
	}
	return nil
}

// Update updates a claim's spec (its status stays the stored one).
func (c *storeClient) Update(ctx context.Context, obj client.Object, _ ...client.UpdateOption) error {
	o, ok := obj.(*v1alpha1.IPClaim)
	if !ok {
		return fmt.Errorf("store client: update %T", obj)
	}
	cur, err := c.live(o.Name)
	if err != nil {
		return err
	}
	n := o.DeepCopy()
	n.Status = cur.Status
	if err := c.f.ctrlView.Update(ctx, n); err != nil {
		return apiError(o.Name, err)
	}
	o.ResourceVersion = n.ResourceVersion
	if cur.Spec.State == v1alpha1.ClaimBound && n.Spec.State == v1alpha1.ClaimReserved {
		c.f.ctrlActed.Add(1)
	}
	return nil
}

// Delete deletes a claim at the resourceVersion of its preconditions.
func (c *storeClient) Delete(ctx context.Context, obj client.Object, opts ...client.DeleteOption) error {
	o, ok := obj.(*v1alpha1.IPClaim)
	if !ok {
		return fmt.Errorf("store client: delete %T", obj)
	}
	do := (&client.DeleteOptions{}).ApplyOptions(opts)
	rv := o.ResourceVersion
	if do.Preconditions != nil && do.Preconditions.ResourceVersion != nil {
		rv = *do.Preconditions.ResourceVersion
	}
	cur, err := c.live(o.Name)
	if err != nil {
		return err
	}
	if err := c.f.ctrlView.Delete(ctx, &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: o.Name, ResourceVersion: rv}}); err != nil {
		return apiError(o.Name, err)
	}
	if cur.Spec.State == v1alpha1.ClaimBound {
		c.f.ctrlActed.Add(1)
	}
	return nil
}

func (c *storeClient) Status() client.SubResourceWriter { return statusWriter{c: c} }

// statusWriter updates a claim's status (its spec stays the stored one).
type statusWriter struct {
	client.SubResourceWriter
	c *storeClient
}

func (w statusWriter) Update(ctx context.Context, obj client.Object, _ ...client.SubResourceUpdateOption) error {
	o, ok := obj.(*v1alpha1.IPClaim)
	if !ok {
		return fmt.Errorf("store client: update the status of %T", obj)
	}
	cur, err := w.c.live(o.Name)
	if err != nil {
		return err
	}
	if cur.ResourceVersion != o.ResourceVersion {
		return apierrors.NewConflict(claimsResource, o.Name, errors.New("the object has been modified"))
	}
	n := cur.DeepCopy()
	n.Status = *o.Status.DeepCopy()
	if err := w.c.f.ctrlView.Update(ctx, n); err != nil {
		return apiError(o.Name, err)
	}
	o.ResourceVersion = n.ResourceVersion
	was := meta.FindStatusCondition(cur.Status.Conditions, ipclaimgc.ConditionOrphaned)
	if is := meta.FindStatusCondition(n.Status.Conditions, ipclaimgc.ConditionOrphaned); is != nil && is.Reason == ipclaimgc.ReasonAgentActive &&
		(was == nil || was.Reason != ipclaimgc.ReasonAgentActive) {
		w.c.f.ctrlDeferred.Add(1)
	}
	return nil
}

// reconcile is berth-controller reconciling every claim once, as its
// resync does; sync catches its cache up first.
func (f *faultModel) reconcile(sync bool) {
	f.ctrlMu.Lock()
	defer f.ctrlMu.Unlock()
	if sync {
		f.ctrlView.Sync()
	}
	ctx := ctrl.LoggerInto(context.Background(), logr.Discard())
	for _, c := range f.m.store.Claims() {
		_, err := f.gc.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Name: c.Name}})
		if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) { // both requeue
			f.m.failf("berth-controller's reconcile of claim %s: %v", c.Name, err)
		}
	}
	f.ctrlRuns.Add(1)
}

// callTimeout is berth-ipam's call with a timeout of d: false if it gave
// up first (the agent's request runs on).
func (f *faultModel) callTimeout(p *propPod, container string, d time.Duration) (protocol.Response, bool) {
	p.node.mu.RLock()
	defer p.node.mu.RUnlock()
	req := protocol.Request{ContainerID: container, IfName: "eth0", Netns: "/var/run/netns/" + container,
		PodNamespace: p.pod.Namespace, PodName: p.pod.Name, PodUID: string(p.pod.UID)}
	b, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://berth/v1/"+protocol.CommandAdd, bytes.NewReader(b))
	if err != nil {
		f.m.t.Fatal(err)
	}
	resp, err := p.node.h.http.Do(hreq)
	if err != nil {
		if ctx.Err() == nil {
			f.m.failf("ADD %s of %s: %v", container, p.pod.Name, err)
		}
		return protocol.Response{}, false
	}
	defer resp.Body.Close()
	var out protocol.Response
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		if ctx.Err() == nil {
			f.m.failf("ADD %s of %s: decode: %v", container, p.pod.Name, err)
		}
		return protocol.Response{}, false
	}
	return out, true
}

// step is one random step of the fault model: most are propModel's.
func (f *faultModel) step(r *rand.Rand) {
	m := f.m
	switch op := r.IntN(40); {
	case op < 26:
		m.step(r, f.seed)
	case op < 30: // a force delete: the pod object goes, its sandbox (if any) stays
		m.mu.Lock()
		p := m.pick(r, "pending", "running", "terminating")
		if p == nil {
			m.mu.Unlock()
			return
		}
		m.store.RemovePod("ns", p.pod.Name)
		if p.hasSandbox() {
			p.state, p.busy = "forced", false
			f.forced.Add(1)
			m.mu.Unlock()
			return
		}
		p.state = "gone"
		m.mu.Unlock()
		m.freePrepared(p)
		m.mu.Lock()
		p.busy = false
		m.mu.Unlock()
	case op < 33: // a force-deleted pod's sandbox is torn down: DEL, or nothing (the sweep releases its claim)
		m.mu.Lock()
		p := m.pick(r, "forced")
		if p == nil {
			m.mu.Unlock()
			return
		}
		m.teardown(p)
		m.mu.Unlock()
		if r.IntN(3) > 0 {
			m.del(p, p.container)
		} else {
			f.forcedSilent.Add(1)
		}
		m.mu.Lock()
		p.state = "gone"
		m.mu.Unlock()
		m.freePrepared(p)
		m.mu.Lock()
		p.busy = false
		m.mu.Unlock()
	case op < 36: // ADD with berth-ipam's timeout shorter than the agent's work
		m.mu.Lock()
		p := m.pick(r, "pending")
		if p == nil {
			m.mu.Unlock()
			return
		}
		p.sandboxes++
		container := fmt.Sprintf("%s-s%d", p.pod.UID, p.sandboxes)
		p.inflight = container
		m.mu.Unlock()
		resp, answered := f.callTimeout(p, container, time.Duration(2+r.IntN(15))*time.Millisecond)
		if answered {
			m.afterAdd(r, p, container, resp)
			return
		}
		f.timeouts.Add(1)
		switch r.IntN(3) {
		case 0: // the runtime tries the ADD again, while the first may still run
			m.afterAdd(r, p, container, m.call(p, protocol.CommandAdd, container))
			return
		case 1: // it tears the sandbox down: DEL while the ADD may still run
			m.del(p, container)
		} // else it lost track of the sandbox: the sweep (or CNI GC) releases its claim
		m.mu.Lock()
		p.inflight, p.busy = "", false
		m.mu.Unlock()
	case op < 38: // berth-controller's resync
		f.reconcile(r.IntN(2) == 0)
	case op == 38: // an agent restarts after being down longer than GC's grace: the sweep may release what no DEL did
		n := m.nodes[r.IntN(len(m.nodes))]
		if f.quiesce(n) {
			m.restartIf(n, f.seed, f.percent(), true, nil)
			f.resume(n)
		}
	default: // a node reboots, rarely
		if r.IntN(3) == 0 {
			f.reboot(m.nodes[r.IntN(len(m.nodes))])
		}
	}
}

// reboot is node n going down long enough for berth-controller to act
// for it: its sandboxes end without DEL, PodGC deletes the objects of its
// pods that had one, the agent's lease goes stale and the controller
// reserves or frees their claims; then the node comes back with /run
// cleared (no attachment record, no queued DEL) and a new agent, whose
// sweep finds no sandbox. Its pending pods stay, to be started there.
// (A node that is only partitioned, its sandboxes running while its
// agent is silent past the grace period, is the risk the grace period
// accepts: not modelled.)
func (f *faultModel) reboot(n *propNode) {
	m := f.m
	if !f.quiesce(n) {
		return
	}
	defer f.resume(n)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.h.stop()
	m.restarts.Add(1)
	n.silent.Store(true)
	m.mu.Lock()
	for _, p := range m.pods {
		if p.node != n || !p.hasSandbox() {
			continue
		}
		m.teardown(p)
		if p.state != "forced" {
			m.store.RemovePod("ns", p.pod.Name)
		}
		p.state = "gone"
	}
	m.mu.Unlock()
	f.reconcile(true)
	for _, d := range []string{"queue", "attachments"} {
		if err := os.RemoveAll(filepath.Join(n.dir, d)); err != nil {
			m.failf("reboot of %s: %v", n.name, err)
		}
	}
	m.start(n, f.seed, f.percent())
	n.silent.Store(false)
	f.reboots.Add(1)
}

// quiesce waits until no step works on a pod of n and keeps them off it
// until resume (no ADD chain runs there, say, while its agent is down for
// minutes); false if another step has n quiesced.
func (f *faultModel) quiesce(n *propNode) bool {
	m := f.m
	m.mu.Lock()
	if n.rebooting {
		m.mu.Unlock()
		return false
	}
	n.rebooting = true // no pod of n is picked from now on
	m.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m.mu.Lock()
		busy := false
		for _, p := range m.pods {
			busy = busy || p.node == n && p.busy
		}
		m.mu.Unlock()
		if !busy {
			return true
		}
		if time.Now().After(deadline) {
			m.failf("%s's pods stayed busy for 30s", n.name)
			f.resume(n)
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

func (f *faultModel) resume(n *propNode) {
	f.m.mu.Lock()
	n.rebooting = false
	f.m.mu.Unlock()
}

// sweepsOK is how many sweeps of n's agent ran through.
func sweepsOK(t *testing.T, n *propNode) float64 {
	v, _ := promtest.Value(t, n.h.reg, "berth_agent_ipam_gc_runs_total", map[string]string{"source": "sweep", "result": "ok"})
	return v
}

// sweepsRefused is how many sweeps of n's agent were refused.
func sweepsRefused(t *testing.T, n *propNode) float64 {
	v, _ := promtest.Value(t, n.h.reg, "berth_agent_ipam_gc_runs_total", map[string]string{"source": "sweep", "result": "refused"})
	return v
}

// TestServer_property_faults_inMemoryAPIServer is issue 22's fault suite
// on the property model: propModel's random steps (ADD, DEL, CHECK, CNI
// GC, CONFLICT, preparations, agent restarts, lagging caches, a lossy API
// server) interleaved with force deletes (the pod object goes while its
// sandbox still holds its addresses; the sandbox is torn down later,
// with a DEL or none), berth-ipam timing out before the agent answers
// (the runtime then tries the ADD again, runs DEL while the ADD may still
// run, or forgets the sandbox), agents killed after a claim create landed
// and before they answered, nodes rebooting (sandboxes gone without DEL,
// /run cleared, the agent's lease stale meanwhile), and berth-controller's
// real ipclaimgc Reconciler over the same in-memory API server (its
// client a test double over ipamtest: see storeClient). Each agent sweeps
// its node's claims against the model's runtime (sandboxLister).
//
// It checks that no address is given to a pod while another pod's
// sandbox still has it, whatever became of that pod's object (a holder
// is live until its sandbox is torn down), and that once the dust
// settles (every sandbox torn down or lost, the agents restarted later
// than GC's grace, swept, and berth-controller run with every agent
// fresh, then with every agent silent) no claim is bound to a container
// the runtime does not have, no address is leaked, and no DEL is left
// queued.
func TestServer_property_faults_inMemoryAPIServer(t *testing.T) {
	const seeds, steps = 12, 150
	var total struct {
		added, kills, forced, forcedSilent, timeouts, reboots, ctrlDeferred, ctrlActed, swept, refusedDrains int
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			m := &propModel{t: t, store: ipalloctest.New(), pods: map[types.UID]*propPod{}, holder: map[string]types.UID{}}
			f := newFaultModel(m, seed)
			m.store.AddPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/29", Gateway: "10.0.0.1"}})
			for i := range 2 {
				n := &propNode{name: fmt.Sprintf("n%d", i), dir: t.TempDir()}
				m.start(n, seed, propFailPercent)
				m.nodes = append(m.nodes, n)
			}
			syncing, stopSync := context.WithCancel(context.Background())
			var syncer sync.WaitGroup
			syncer.Go(func() { m.syncEvery(syncing, 10*time.Millisecond) })
			defer func() { stopSync(); syncer.Wait() }()
			reviving, stopReviving := context.WithCancel(context.Background())
			var reviver sync.WaitGroup
			reviver.Go(func() { f.reviveEvery(reviving, 5*time.Millisecond) })
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(seed, uint64(100+w)))
					for range steps {
						f.step(r)
					}
				})
			}
			wg.Wait()
			stopReviving()
			reviver.Wait()

			// The dust settles, with the API server well: every sandbox is
			// torn down (a DEL, or none: the runtime lost it) and every pod
			// object goes.
			f.draining.Store(true)
			for _, n := range m.nodes {
				f.reviveKilled(n)
				n.mu.RLock()
				n.lossy.mu.Lock()
				n.lossy.percent, n.lossy.slowPercent, n.lossy.killPercent = 0, 0, 0
				n.lossy.mu.Unlock()
				n.mu.RUnlock()
			}
			r := rand.New(rand.NewPCG(seed, 99))
			var dels []*propPod
			m.mu.Lock()
			for _, p := range m.pods {
				if p.state == "gone" {
					continue
				}
				m.teardown(p)
				if p.state != "forced" {
					m.store.RemovePod("ns", p.pod.Name)
				}
				if p.hasSandbox() && r.IntN(4) > 0 {
					dels = append(dels, p)
				}
				p.state = "gone"
			}
			m.mu.Unlock()
			for _, p := range dels {
				m.del(p, p.container)
			}
			for _, p := range m.pods {
				m.freePrepared(p)
			}
			// Time passes (past GC's grace): each agent restarts and sweeps.
			for _, n := range m.nodes {
				poll.Until(t, 10*time.Second, n.name+"'s releases to be written", func() bool {
					return gauge(t, n.h.reg, "berth_agent_ipam_releases_pending") == 0
				})
				m.restartIf(n, seed, 0, true, nil)
				poll.Until(t, 10*time.Second, n.name+"'s first sweep", func() bool { return sweepsOK(t, n) > 0 || sweepsRefused(t, n) > 0 })
				if sweepsRefused(t, n) > 0 {
					// More of the node's claims lost at once than a sweep
					// may release: the operator raises --ipam-gc-max-share.
					f.refused.Add(1)
					f.gcMaxShare = 1
					m.restartIf(n, seed, 0, true, nil)
					f.gcMaxShare = 0
				}
				for deadline := time.Now().Add(10 * time.Second); sweepsOK(t, n) < 2; time.Sleep(10 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("%s's agent ran %v sweeps through in 10s, want 2; its claims: %s; the sweeps' logs:\n%s", n.name, sweepsOK(t, n),
							m.claimsOf([]string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}), m.logsAbout("source=sweep", "sweep"))
					}
				}
			}
			f.reconcile(true) // every agent renews its lease: berth-controller leaves their claims to them
			for _, f := range m.failures {
				t.Error(f)
			}
			check := func(when string) {
				for _, c := range m.store.Claims() {
					if c.Spec.State == v1alpha1.ClaimConflict && c.Spec.ContainerID == "" {
						continue // out of use until berth-controller ends its quarantine
					}
					if c.Spec.State != v1alpha1.ClaimReserved || c.Spec.App == nil {
						t.Errorf("%s: claim %s (%s) left %s, app %v, pod %s, node %s, container %q, which the runtime does not have; the agents' logs of it:\n%s",
							when, c.Name, c.Spec.Address, c.Spec.State, c.Spec.App, c.Spec.Pod.Name, c.Spec.Node, c.Spec.ContainerID,
							m.logsAbout(c.Spec.ContainerID, "claim="+c.Name+" "))
					}
				}
			}
			check("after the agents' sweeps")
			for _, n := range m.nodes {
				n.silent.Store(true)
			}
			f.reconcile(true)
			check("after berth-controller ran with every agent silent")
			for _, n := range m.nodes {
				for _, d := range []string{"queue", "attachments"} {
					if left, _ := filepath.Glob(filepath.Join(n.dir, d, "*.json")); len(left) > 0 {
						rec, _ := os.ReadFile(left[0])
						id := strings.TrimSuffix(filepath.Base(left[0]), "-eth0.json")
						t.Errorf("%s's %s directory holds %d files after every pod is gone, e.g. %s: %s; the agents' logs of its container:\n%s",
							n.name, d, len(left), filepath.Base(left[0]), rec, m.logsAbout(id))
					}
				}
			}
			swept := 0
			for _, l := range strings.Split(m.logs.String(), "\n") {
				if strings.Contains(l, "GC released the claim") && strings.Contains(l, "source=sweep") {
					swept++
				}
			}
			total.added += int(m.added.Load())
			total.kills += int(f.kills.Load())
			total.forced += int(f.forced.Load())
			total.forcedSilent += int(f.forcedSilent.Load())
			total.timeouts += int(f.timeouts.Load())
			total.reboots += int(f.reboots.Load())
			total.ctrlDeferred += int(f.ctrlDeferred.Load())
			total.ctrlActed += int(f.ctrlActed.Load())
			total.swept += swept
			total.refusedDrains += int(f.refused.Load())
		})
	}
	t.Logf("%+v", total)
	if total.added == 0 || total.kills == 0 || total.forced == 0 || total.forcedSilent == 0 || total.timeouts == 0 || total.reboots == 0 ||
		total.ctrlDeferred == 0 || total.ctrlActed == 0 || total.swept == 0 {
		t.Errorf("each count must be above 0 for the test to mean something: %+v", total)
	}
}
