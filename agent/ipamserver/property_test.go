package ipamserver_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/internal/ipalloc"
	"github.com/berth-io/berth/internal/ipalloc/ipalloctest"
	"github.com/berth-io/berth/test/lockedbuf"
	"github.com/berth-io/berth/test/poll"
)

// lossyStore fails a share of the claim writes with errUnreachable, as an
// API server that restarts or sheds load does: most before the write,
// some after it was committed (the answer lost on the way back).
type lossyStore struct {
	ipalloc.Store
	mu      sync.Mutex
	r       *rand.Rand
	percent int // of writes that fail; 0 once the test drains
	fails   *atomic.Int32
	// The fault model's (property_fault_test.go): slowPercent of the writes
	// take 5-40ms (berth-ipam's timeout may end first), and killPercent of
	// the creates land and kill the agent before it answers: a dead
	// agent's store writes nothing more.
	slowPercent, killPercent int
	kills                    *atomic.Int32
	dead                     atomic.Bool
}

// rollFault says how long a write waits before it is sent, and whether a
// create kills the agent once it landed.
func (f *lossyStore) rollFault(create bool) (time.Duration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var slow time.Duration
	if f.slowPercent > 0 && f.r.IntN(100) < f.slowPercent {
		slow = time.Duration(5+f.r.IntN(36)) * time.Millisecond
	}
	return slow, create && f.killPercent > 0 && f.r.IntN(100) < f.killPercent
}

func (f *lossyStore) roll() (before, after bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.r.IntN(100)
	return n < f.percent*2/3, n >= f.percent*2/3 && n < f.percent
}

func (f *lossyStore) write(create bool, do func() error) error {
	if f.dead.Load() {
		return errKilled
	}
	slow, kill := f.rollFault(create)
	if slow > 0 {
		time.Sleep(slow)
	}
	if kill {
		if err := do(); err != nil {
			return err
		}
		f.dead.Store(true)
		f.kills.Add(1)
		return errKilled
	}
	before, after := f.roll()
	if before {
		f.fails.Add(1)
		return errUnreachable
	}
	if err := do(); err != nil || !after {
		return err
	}
	f.fails.Add(1)
	return errUnreachable
}

func (f *lossyStore) Create(ctx context.Context, c *v1alpha1.IPClaim) error {
	return f.write(true, func() error { return f.Store.Create(ctx, c) })
}

func (f *lossyStore) Update(ctx context.Context, c *v1alpha1.IPClaim) error {
	return f.write(false, func() error { return f.Store.Update(ctx, c) })
}

func (f *lossyStore) Delete(ctx context.Context, c *v1alpha1.IPClaim) error {
	return f.write(false, func() error { return f.Store.Delete(ctx, c) })
}

// propNode is one node's agent, restarted now and then over the same
// directories, as berth-agent's pod is.
type propNode struct {
	mu    sync.RWMutex // calls hold it to read, a restart to write
	name  string
	dir   string
	view  *ipalloctest.View
	lossy *lossyStore
	h     *harness
	// The fault model's: rebooting (m.mu held) keeps the node's pods from
	// being picked; silent makes its agent's lease look stale to
	// berth-controller.
	rebooting bool
	silent    atomic.Bool
	// viewp is view, for sync: an informer catches up also while its
	// agent restarts.
	viewp atomic.Pointer[ipalloctest.View]
}

type propPod struct {
	pod       *corev1.Pod
	node      *propNode
	container string   // of its last ADD that succeeded
	inflight  string   // the sandbox whose ADD runs now
	addrs     []string // its network's
	state     string   // pending, running, terminating, forced (object gone, sandbox not), gone
	busy      bool
	sandboxes int
}

// propModel drives the cluster: pods, their nodes, and which pod's network
// holds each address (from its ADD's answer until its DEL starts).
type propModel struct {
	t           *testing.T
	store       *ipalloctest.Store
	nodes       []*propNode
	mu          sync.Mutex
	pods        map[types.UID]*propPod
	holder      map[string]types.UID
	seq         int
	failures    []string
	fails       atomic.Int32 // writes the store failed
	added       atomic.Int32
	restarts    atomic.Int32
	queued      atomic.Int32 // DEL records an agent's restart found
	gcs         atomic.Int32
	quarantined atomic.Int32 // addresses the agents took out of use on a CONFLICT
	logs        lockedbuf.Buffer
	fault       *faultModel // the fault model's additions; nil in TestServer_property_inMemoryAPIServer
}

// logsAbout is the agents' log lines that mention any of what.
func (m *propModel) logsAbout(what ...string) string {
	var out []string
	for _, l := range strings.Split(m.logs.String(), "\n") {
		for _, w := range what {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// claimsOf describes the claims of addrs as the API server has them.
func (m *propModel) claimsOf(addrs []string) string {
	var out []string
	for _, c := range m.store.Claims() {
		if slices.Contains(addrs, c.Spec.Address) {
			out = append(out, fmt.Sprintf("%s rv %s: %s pod %s/%s container %q node %s", c.Name, c.ResourceVersion, c.Spec.State, c.Spec.Pod.Name, c.Spec.Pod.UID, c.Spec.ContainerID, c.Spec.Node))
		}
	}
	return strings.Join(out, "; ")
}

// addressAttrs are the log attributes of the addresses.
func addressAttrs(addrs []string) []string {
	var out []string
	for _, a := range addrs {
		out = append(out, "address="+a+"/")
	}
	return out
}

func (m *propModel) failf(format string, args ...any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failures = append(m.failures, fmt.Sprintf(format, args...))
}

// start (re)starts n's agent with DeferRelease over a new cache of the
// store, as a new agent process; n.mu is held for writing or not shared yet.
func (m *propModel) start(n *propNode, seed uint64, percent int) {
	n.view = m.store.View(true)
	n.viewp.Store(n.view)
	n.lossy = &lossyStore{Store: n.view, r: rand.New(rand.NewPCG(seed, uint64(m.restarts.Load()))), percent: percent, fails: &m.fails}
	cfg := ipamserver.Config{SocketPath: filepath.Join(n.dir, "ipam.sock"), Node: n.name, Store: n.lossy,
		QueueDir: filepath.Join(n.dir, "queue"), AttachmentDir: filepath.Join(n.dir, "attachments"), DeferRelease: true,
		Registerer: prometheus.NewRegistry(), MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&m.logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", n.name)}
	if m.fault != nil {
		m.fault.configure(n, &cfg, percent)
	}
	n.h = start(m.t, cfg)
}

// restart stops n's agent and starts the next one, which runs the DELs
// the last one answered and did not release before it serves.
func (m *propModel) restart(n *propNode, seed uint64, percent int) {
	m.restartIf(n, seed, percent, false, nil)
}

// restartIf restarts n's agent if cond (nil: always) holds once the
// calls on n have ended; with age, the ADDs recorded before look older
// than GC's grace (the agent was down a while).
func (m *propModel) restartIf(n *propNode, seed uint64, percent int, age bool, cond func() bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if cond != nil && !cond() {
		return
	}
	n.h.stop()
	if age {
		ageRecords(m.t, filepath.Join(n.dir, "attachments"))
	}
	m.restarts.Add(1)
	left, _ := filepath.Glob(filepath.Join(n.dir, "queue", "*.json"))
	m.queued.Add(int32(len(left)))
	m.start(n, seed, percent)
}

// call runs cmd on the pod's node's agent.
func (m *propModel) call(p *propPod, cmd, container string) protocol.Response {
	resp, _ := m.callKilled(p, cmd, container)
	return resp
}

// callKilled is call, and whether the node's agent was killed by the time
// it answered (property_fault_test.go): then any call may fail.
func (m *propModel) callKilled(p *propPod, cmd, container string) (protocol.Response, bool) {
	p.node.mu.RLock()
	defer p.node.mu.RUnlock()
	req := protocol.Request{ContainerID: container, IfName: "eth0"}
	if cmd == protocol.CommandAdd {
		// As berth-ipam sends them (CNI_NETNS, CNI_ARGS).
		req.Netns, req.PodNamespace, req.PodName, req.PodUID = "/var/run/netns/"+container, p.pod.Namespace, p.pod.Name, string(p.pod.UID)
	}
	return p.node.h.call(cmd, req), p.node.lossy.dead.Load()
}

// del is the runtime's DEL: it must succeed, the agent answering once the
// DEL is recorded.
func (m *propModel) del(p *propPod, container string) {
	if r := m.call(p, protocol.CommandDel, container); r.Error != nil {
		m.failf("DEL %s of %s: %+v", container, p.pod.Name, r.Error)
	}
}

// lostSandbox is a node's reboot while a sandbox runs: a new pod's ADD on
// n succeeds, then the runtime loses the sandbox and the agent its
// attachment record (/run is a tmpfs), so no DEL comes and only CNI GC
// releases the claim once the agent runs again. Failed ADDs whose sandbox
// the runtime lost leave such claims at random too, but on a loaded
// machine some runs have none; this one makes every run's GC release one.
func (m *propModel) lostSandbox(t *testing.T, n *propNode) {
	t.Helper()
	m.seq++
	p := &propPod{node: n, state: "pending", pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns",
		Name: fmt.Sprintf("pod-%d", m.seq), UID: types.UID(fmt.Sprintf("uid-%d", m.seq))}}}
	m.store.SetPod(p.pod)
	m.pods[p.pod.UID] = p
	container := string(p.pod.UID) + "-lost"
	if r := m.call(p, protocol.CommandAdd, container); r.Error != nil {
		t.Fatalf("ADD of the sandbox a reboot loses: %+v", r.Error)
	}
	if err := os.Remove(filepath.Join(n.dir, "attachments", protocol.FileName(container, "eth0"))); err != nil {
		t.Fatalf("the reboot's loss of the attachment record: %v", err)
	}
	m.store.RemovePod("ns", p.pod.Name)
	p.state = "gone"
}

// pick returns a random idle pod in one of states, marked busy; m.mu held.
func (m *propModel) pick(r *rand.Rand, states ...string) *propPod {
	p, ok := ipalloctest.Pick(r, m.pods, func(p *propPod) bool { return !p.busy && !p.node.rebooting && slices.Contains(states, p.state) })
	if ok {
		p.busy = true
	}
	return p
}

// propFailPercent of the claim writes fail until the test drains.
const propFailPercent = 15

var propApps = []struct{ kind, owner string }{{"StatefulSet", "db"}, {"ReplicaSet", "web-5d8f"}, {"", ""}}

func (m *propModel) step(r *rand.Rand, seed uint64) {
	m.mu.Lock()
	switch op := r.IntN(15); {
	case op < 2: // a new pod
		m.seq++
		app := propApps[r.IntN(len(propApps))]
		name := fmt.Sprintf("pod-%d", m.seq)
		var owners []metav1.OwnerReference
		if app.kind != "" {
			owners = []metav1.OwnerReference{{Kind: app.kind, Name: app.owner, Controller: ptr.To(true)}}
			name = fmt.Sprintf("%s-%d", app.owner, m.seq)
		}
		if app.kind == "StatefulSet" {
			name = fmt.Sprintf("db-%d", r.IntN(3)) // a name in use waits
			for _, p := range m.pods {
				if p.pod.Name == name && p.state != "gone" && p.state != "forced" { // a force-deleted pod's name is free
					m.mu.Unlock()
					return
				}
			}
		}
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(fmt.Sprintf("uid-%d", m.seq)), OwnerReferences: owners}}
		m.store.SetPod(p)
		m.pods[p.UID] = &propPod{pod: p, node: m.nodes[r.IntN(len(m.nodes))], state: "pending"}
		m.mu.Unlock()
	case op < 5: // ADD of a pending pod's new sandbox
		p := m.pick(r, "pending")
		if p == nil {
			m.mu.Unlock()
			return
		}
		p.sandboxes++
		container := fmt.Sprintf("%s-s%d", p.pod.UID, p.sandboxes)
		p.inflight = container
		m.mu.Unlock()
		m.afterAdd(r, p, container, m.call(p, protocol.CommandAdd, container))
	case op < 7: // deletion starts
		if p := m.pick(r, "pending", "running"); p != nil {
			p.pod = p.pod.DeepCopy()
			p.pod.DeletionTimestamp = &metav1.Time{Time: time.Now()}
			m.store.SetPod(p.pod)
			p.state, p.busy = "terminating", false
		}
		m.mu.Unlock()
	case op < 9: // teardown: the network goes, then CNI DEL (sometimes twice), then the pod object
		p := m.pick(r, "terminating")
		if p == nil {
			m.mu.Unlock()
			return
		}
		m.teardown(p)
		m.mu.Unlock()
		if p.container != "" {
			for range 1 + r.IntN(2) {
				m.del(p, p.container)
			}
		}
		m.mu.Lock()
		m.store.RemovePod("ns", p.pod.Name)
		p.state = "gone"
		m.mu.Unlock()
		m.freePrepared(p)
		m.mu.Lock()
		p.busy = false
		m.mu.Unlock()
	case op == 9: // CHECK of a running pod
		p := m.pick(r, "running")
		m.mu.Unlock()
		if p == nil {
			return
		}
		if resp, killed := m.callKilled(p, protocol.CommandCheck, p.container); resp.Error != nil && !killed {
			m.failf("CHECK %s (running, %v) on %s: %+v; its claims now: %s; the agents' logs of its container:\n%s", p.pod.Name, p.addrs, p.node.name, resp.Error,
				m.claimsOf(p.addrs), m.logsAbout(append([]string{p.container}, addressAttrs(p.addrs)...)...))
		}
		m.mu.Lock()
		p.busy = false
		m.mu.Unlock()
	case op == 10: // an agent restarts: the DELs it answered and did not release are in its queue
		n := m.nodes[r.IntN(len(m.nodes))]
		m.mu.Unlock()
		m.restart(n, seed, propFailPercent)
	case op == 11: // CNI GC on a node: the runtime's sandboxes there are valid
		n := m.nodes[r.IntN(len(m.nodes))]
		var valid []protocol.Attachment
		for _, p := range m.pods {
			if p.node != n {
				continue
			}
			if p.hasSandbox() {
				valid = append(valid, protocol.Attachment{ContainerID: p.container, IfName: "eth0"})
			}
			if p.inflight != "" {
				valid = append(valid, protocol.Attachment{ContainerID: p.inflight, IfName: "eth0"})
			}
		}
		m.mu.Unlock()
		n.mu.RLock()
		resp := n.h.call(protocol.CommandGC, protocol.Request{ValidAttachments: valid})
		n.mu.RUnlock()
		// The fault model loses sandboxes without DEL: a node's claims may
		// then look truncated to GC, which refuses them (its sweep releases
		// them later, or the operator).
		refused := m.fault != nil && resp.Error != nil && strings.Contains(resp.Error.Details, ipalloc.ErrGCRefused.Error())
		if e := resp.Error; e != nil && !strings.Contains(e.Details, errUnreachable.Error()) && !refused {
			m.failf("GC on %s: %+v", n.name, e)
		}
		m.gcs.Add(1)
	case op == 12: // the agent prepares a pending pod's address before its sandbox exists
		p := m.pick(r, "pending")
		m.mu.Unlock()
		if p == nil {
			return
		}
		_, err := p.node.preparer().Prepare(context.Background(), ipalloc.Request{IfName: "eth0", PodNamespace: "ns", PodName: p.pod.Name, PodUID: p.pod.UID})
		if err != nil && !ipalloc.Retryable(err) && !errors.Is(err, ipalloc.ErrExhausted) && !strings.Contains(err.Error(), errUnreachable.Error()) {
			m.failf("prepare %s: %v", p.pod.Name, err)
		}
		m.mu.Lock()
		p.busy = false
		m.mu.Unlock()
	case op == 13: // a quarantine ends: berth-controller frees the claim, the stranger is gone
		m.mu.Unlock()
		m.endQuarantine(r)
	default: // an agent's cache catches up
		n := m.nodes[r.IntN(len(m.nodes))]
		m.mu.Unlock()
		n.sync()
	}
}

// afterAdd is the runtime after the ADD of the pod's sandbox container
// answered resp: a failed one torn down (DEL) or lost, a CONFLICT, or the
// sandbox running with its addresses.
func (m *propModel) afterAdd(r *rand.Rand, p *propPod, container string, resp protocol.Response) {
	m.mu.Lock()
	p.inflight = ""
	m.mu.Unlock()
	if resp.Error != nil {
		if m.fault != nil {
			m.fault.reviveKilled(p.node) // the agent that died in this ADD restarts before the runtime's DEL
		}
		e := resp.Error
		if e.Code != protocol.CodeTryAgainLater && e.Code != 100 && !strings.Contains(e.Details, errUnreachable.Error()) {
			m.failf("ADD %s: unexpected error %+v", p.pod.Name, e)
		}
		if r.IntN(3) > 0 {
			m.del(p, container) // the runtime tears down what a failed ADD left
		} // else it lost track of the sandbox: CNI GC cleans up
		m.mu.Lock()
		p.busy = false
		m.mu.Unlock()
		return
	}
	if len(resp.IPs) > 0 && r.IntN(6) == 0 {
		m.conflict(p, container, resp.IPs)
		return
	}
	m.added.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ip := range resp.IPs {
		addr := strings.Split(ip.Address, "/")[0]
		if h, ok := m.holder[addr]; ok && h == stranger {
			m.failures = append(m.failures, fmt.Sprintf("ADD %s got %s, which a stranger answers for (the agent quarantined it); its claim now: %s; the agents' logs of it:\n%s",
				p.pod.Name, addr, m.claimsOf([]string{addr}), m.logsAbout("address="+addr+"/", "address="+addr+" ")))
		} else if ok && h != p.pod.UID {
			m.failures = append(m.failures, fmt.Sprintf("ADD %s got %s, which the network of %s (%s) still has", p.pod.Name, addr, m.pods[h].pod.Name, m.pods[h].state))
		}
		m.holder[addr] = p.pod.UID
		p.addrs = append(p.addrs, addr)
	}
	p.container, p.state, p.busy = container, "running", false
}

// stranger holds, in propModel.holder, an address another host answers
// for on the pods' link.
const stranger types.UID = "stranger"

// conflict is berth-netcheck after an ADD that gave container addrs: a
// stranger on the link answers for the first, so it tells the pod's
// agent (CONFLICT), the ADD fails, and the runtime runs DEL (berth-ipam's
// ADD succeeded and recorded the attachment: a runtime that lost the
// sandbox would leave it to CNI GC after its grace, past this test's
// end). Once the agent took the report, the stranger holds the address:
// no pod may get it until its quarantine ends (endQuarantine).
func (m *propModel) conflict(p *propPod, container string, ips []protocol.IP) {
	m.mu.Lock()
	for _, ip := range ips {
		addr := strings.Split(ip.Address, "/")[0]
		if h, ok := m.holder[addr]; ok && h != p.pod.UID {
			m.failures = append(m.failures, fmt.Sprintf("ADD %s got %s, which %s still has", p.pod.Name, addr, h))
		}
	}
	m.mu.Unlock()
	addr := strings.Split(ips[0].Address, "/")[0]
	p.node.mu.RLock()
	resp := p.node.h.call(protocol.CommandConflict, protocol.Request{ContainerID: container, IfName: "eth0", Address: addr, MAC: "02:00:00:00:00:99"})
	killed := p.node.lossy.dead.Load()
	p.node.mu.RUnlock()
	if e := resp.Error; e != nil && !strings.Contains(e.Details, errUnreachable.Error()) && !killed {
		m.failf("CONFLICT %s of %s: %+v", addr, p.pod.Name, e)
	}
	if resp.Error == nil {
		m.quarantined.Add(1)
		m.mu.Lock()
		m.holder[addr] = stranger
		m.mu.Unlock()
	} // else berth-netcheck says the agent was not told: the next ADD may meet the stranger again
	m.del(p, container)
	m.mu.Lock()
	p.busy = false
	m.mu.Unlock()
}

// endQuarantine frees a claim in state Conflict whose stranger the model
// knows of (a CONFLICT that failed after it was committed leaves one it
// does not: that one stays), as berth-controller does when its quarantine
// ends, and the stranger leaves its address.
func (m *propModel) endQuarantine(r *rand.Rand) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var quarantined []*v1alpha1.IPClaim
	for _, c := range m.store.Claims() {
		if c.Spec.State == v1alpha1.ClaimConflict && m.holder[c.Spec.Address] == stranger {
			quarantined = append(quarantined, c)
		}
	}
	if len(quarantined) == 0 {
		return
	}
	c := quarantined[r.IntN(len(quarantined))]
	if err := m.store.View(false).Delete(context.Background(), c); err != nil {
		m.failures = append(m.failures, fmt.Sprintf("end the quarantine of %s: %v (an agent wrote a Conflict claim)", c.Name, err))
		return
	}
	delete(m.holder, c.Spec.Address)
}

// preparer is an allocator over n's agent's store, preparing as its
// preparer does (which watches pods through an informer this store has
// not).
func (n *propNode) preparer() *ipalloc.Allocator {
	n.mu.RLock()
	defer n.mu.RUnlock()
	a, err := ipalloc.New(ipalloc.Config{Store: n.lossy, Node: n.name})
	if err != nil {
		panic(err)
	}
	return a
}

// freePrepared releases the pod's claims that record no container, as the
// agent's preparer does for a pod that is gone, and berth-controller for
// one whose node is gone.
func (m *propModel) freePrepared(p *propPod) {
	for _, c := range m.store.Claims() {
		if c.Spec.Pod.UID == p.pod.UID && c.Spec.ContainerID == "" && c.Spec.State == v1alpha1.ClaimBound {
			if err := p.node.preparer().ReleasePrepared(context.Background(), c.Name, p.pod.UID); err != nil && !ipalloc.Retryable(err) &&
				!errors.Is(err, ipalloc.ErrNotFound) && !strings.Contains(err.Error(), errUnreachable.Error()) { // freed meanwhile: the next try finds it gone
				m.failf("release prepared %s: %v", c.Name, err)
			}
		}
	}
}

// sync brings n's agent's cache up to date.
func (n *propNode) sync() {
	n.viewp.Load().Sync()
}

// syncEvery syncs every node's cache every d until ctx ends, as informers
// catch up.
func (m *propModel) syncEvery(ctx context.Context, d time.Duration) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		for _, n := range m.nodes {
			n.sync()
		}
	}
}

// teardown takes the pod's addresses off its network; m.mu held.
func (m *propModel) teardown(p *propPod) {
	for _, a := range p.addrs {
		if m.holder[a] == p.pod.UID {
			delete(m.holder, a)
		}
	}
}

// TestServer_property_inMemoryAPIServer runs random interleavings, through two agents'
// sockets over one API server (the in-memory store), of pod creation, ADD
// (a failed one followed by its DEL, or by none: CNI GC cleans up; one
// berth-netcheck fails after a stranger answered for its address, which
// it reports with CONFLICT before the runtime's DEL; such a quarantine
// ends at random), deletion, DEL (answered before its release; sometimes
// twice), CHECK, CNI GC, agent restarts and lagging caches, while the API server fails 15% of the
// claim writes (a third of those after committing them). It checks that no
// address is given to a pod while another pod's network still has it, nor
// while a stranger answers for it after the agent took the report, that
// a running pod's CHECK passes, and that once every pod is gone and the
// API server is well, every claim left is an app's reservation (or a
// quarantine not ended) and every
// queue and attachment directory is empty. The API server is the
// in-memory store (ipamtest), not a real one: lost answers, write failures
// and cache lag must come at chosen points, thousands of times a run. A
// real kube-apiserver runs the same server code in the envtest tests and
// the e2e.
func TestServer_property_inMemoryAPIServer(t *testing.T) {
	var added, fails, restarts, queued, gcs, conflicts int32
	collecting, answeredPrepared := 0, 0
	const seeds = 12
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			m := &propModel{t: t, store: ipalloctest.New(), pods: map[types.UID]*propPod{}, holder: map[string]types.UID{}}
			// 6 addresses: the apps wait for each other's teardowns, and
			// the pool runs out.
			m.store.AddPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/29", Gateway: "10.0.0.1"}})
			for i := range 2 {
				n := &propNode{name: fmt.Sprintf("n%d", i), dir: t.TempDir()}
				m.start(n, seed, propFailPercent)
				m.nodes = append(m.nodes, n)
			}
			// The caches catch up every 10ms, and at random steps.
			syncing, stopSync := context.WithCancel(context.Background())
			var syncer sync.WaitGroup
			syncer.Go(func() { m.syncEvery(syncing, 10*time.Millisecond) })
			defer func() { stopSync(); syncer.Wait() }()
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(seed, uint64(w)))
					for range 150 {
						m.step(r, seed)
					}
				})
			}
			wg.Wait()

			// Drain with the API server well: every pod deleted, every
			// DEL run, every agent restarted (running what its queue holds).
			for _, n := range m.nodes {
				n.mu.RLock()
				n.lossy.mu.Lock()
				n.lossy.percent = 0
				n.lossy.mu.Unlock()
				n.mu.RUnlock()
			}
			for _, p := range m.pods {
				if p.state == "gone" {
					continue
				}
				m.teardown(p)
				if p.container != "" {
					m.del(p, p.container)
				}
				m.store.RemovePod("ns", p.pod.Name)
				p.state = "gone"
			}
			// The preparations of pods gone meanwhile (the API server was
			// lossy then), and of the last ones.
			for _, p := range m.pods {
				m.freePrepared(p)
			}
			// The runtime has no sandbox left: GC after a restart takes what
			// failed ADDs left without a DEL (the new agent has seen no ADD).
			restartAndGC := func(n *propNode) {
				m.restart(n, seed, 0)
				if resp := n.h.call(protocol.CommandGC, protocol.Request{}); resp.Error != nil {
					t.Errorf("GC on %s: %+v", n.name, resp.Error)
				}
			}
			for _, n := range m.nodes {
				poll.Until(t, 10*time.Second, n.name+"'s releases to be written", func() bool {
					return gauge(t, n.h.reg, "berth_agent_ipam_releases_pending") == 0
				})
				restartAndGC(n)
			}
			m.lostSandbox(t, m.nodes[0])
			restartAndGC(m.nodes[0])
			logs := m.logs.String()
			collected, fromPrepared := strings.Count(logs, "GC released the claim"), strings.Count(logs, "prepared=true")
			for _, f := range m.failures {
				t.Error(f)
			}
			for _, c := range m.store.Claims() {
				if c.Spec.State == v1alpha1.ClaimConflict && c.Spec.ContainerID == "" {
					continue // out of use until berth-controller ends its quarantine
				}
				if c.Spec.State != v1alpha1.ClaimReserved || c.Spec.App == nil {
					t.Errorf("claim %s (%s) left %s, app %v, pod %s, container %q after every pod is gone; the agents' logs of its container:\n%s",
						c.Name, c.Spec.Address, c.Spec.State, c.Spec.App, c.Spec.Pod.Name, c.Spec.ContainerID, m.logsAbout(c.Spec.ContainerID, "claim="+c.Name+" "))
				}
			}
			for _, n := range m.nodes {
				for _, d := range []string{"queue", "attachments"} {
					if left, _ := filepath.Glob(filepath.Join(n.dir, d, "*.json")); len(left) > 0 {
						t.Errorf("%s's %s directory holds %d files after every pod is gone, e.g. %s", n.name, d, len(left), filepath.Base(left[0]))
					}
				}
			}
			added += m.added.Load()
			fails += m.fails.Load()
			restarts += m.restarts.Load()
			queued += m.queued.Load()
			gcs += m.gcs.Load()
			conflicts += m.quarantined.Load()
			collecting += collected
			answeredPrepared += fromPrepared
		})
	}
	if added == 0 || answeredPrepared == 0 || fails == 0 || queued == 0 || conflicts == 0 || collecting < seeds {
		t.Errorf("%d ADDs answered (%d from prepared claims), %d writes failed, %d DEL records left at restarts, %d addresses quarantined after a conflict, %d claims released by GC: each must be above 0, and the last at least %d (a lost sandbox per drain), for the test to mean something",
			added, answeredPrepared, fails, queued, conflicts, collecting, seeds)
	}
	t.Logf("%d ADDs answered (%d from prepared claims), %d claim writes failed, %d agent restarts finding %d DEL records to run, %d GCs during the run, %d addresses quarantined after a conflict, %d claims released by GC (%d of them the drains' lost sandboxes)",
		added, answeredPrepared, fails, restarts, queued, gcs, conflicts, collecting, seeds)
}
