// Package nritest runs the runtime side of NRI in a test process: the real
// github.com/containerd/nri/pkg/adaptation, as containerd embeds it, on a
// real unix socket, so that a plugin can be tested against it and through
// a runtime restart.
package nritest

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"

	nri "github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
)

// Runtime name and version the fake runtime reports to plugins.
const (
	RuntimeName    = "containerd"
	RuntimeVersion = "v2.2.9"
)

// Runtime is a fake container runtime with NRI enabled.
//
// Adaptation.Stop closes its listener but not the connections of external
// plugins (stopPlugins only kills plugins it launched); when containerd
// exits, the kernel closes them. So plugins dial Socket, where Runtime
// relays each connection to the adaptation's own socket, and Crash closes
// both ends of every relayed connection, as process exit does.
type Runtime struct {
	t   testing.TB
	dir string
	// Pods and Containers are what Synchronize reports to a plugin. Set
	// them before Start.
	Pods       []*api.PodSandbox
	Containers []*api.Container

	mu    sync.Mutex
	nri   *nri.Adaptation
	ln    net.Listener
	conns []net.Conn
	wg    sync.WaitGroup
}

// New returns a stopped Runtime whose sockets live in dir (keep it short:
// a unix socket path has at most 107 bytes). It is crashed at the test's
// end.
func New(t testing.TB, dir string) *Runtime {
	r := &Runtime{t: t, dir: dir}
	t.Cleanup(r.Crash)
	return r
}

// Socket is the NRI socket plugins connect to.
func (r *Runtime) Socket() string { return filepath.Join(r.dir, "nri.sock") }

// Start starts the runtime; plugins can connect once it returns. It can be
// called again after Crash.
func (r *Runtime) Start() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.nri != nil {
		r.t.Fatal("nritest: runtime already started")
	}
	inner := filepath.Join(r.dir, "adaptation.sock")
	a, err := nri.New(RuntimeName, RuntimeVersion, r.synchronize, r.update,
		nri.WithPluginPath(filepath.Join(r.dir, "opt", "nri", "plugins")),
		nri.WithPluginConfigPath(filepath.Join(r.dir, "etc", "nri", "conf.d")),
		nri.WithSocketPath(inner),
	)
	if err != nil {
		r.t.Fatalf("nritest: new adaptation: %v", err)
	}
	if err := a.Start(); err != nil {
		r.t.Fatalf("nritest: start adaptation: %v", err)
	}
	ln, err := net.Listen("unix", r.Socket())
	if err != nil {
		a.Stop()
		r.t.Fatalf("nritest: %v", err)
	}
	r.nri, r.ln = a, ln
	r.wg.Go(func() { r.relay(ln, inner) })
}

func (r *Runtime) relay(ln net.Listener, inner string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		d, err := net.Dial("unix", inner)
		if err != nil {
			c.Close()
			continue
		}
		r.mu.Lock()
		if r.ln != ln { // crashed meanwhile
			r.mu.Unlock()
			c.Close()
			d.Close()
			return
		}
		r.conns = append(r.conns, c, d)
		r.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			c.Close()
			d.Close()
		}
		r.wg.Go(func() { pipe(d, c) })
		r.wg.Go(func() { pipe(c, d) })
	}
}

// Crash stops the runtime the way a dying containerd does: the socket goes
// away and every plugin connection is closed. It does nothing when the
// runtime is not running.
func (r *Runtime) Crash() {
	r.mu.Lock()
	if r.nri == nil {
		r.mu.Unlock()
		return
	}
	r.ln.Close()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
	r.nri.Stop()
	r.nri, r.ln = nil, nil
	r.mu.Unlock()
	r.wg.Wait()
}

// WaitRegistered returns once no plugin is between connecting and being
// synchronized: each plugin that has synchronized now gets requests.
func (r *Runtime) WaitRegistered() {
	r.t.Helper()
	r.adaptation().BlockPluginSync().Unblock()
}

// BlockPluginSync holds off the synchronization of plugins that connect
// until the returned func is called, as containerd's CRI does while a
// container stops (for all of its pod's grace period: containerd#14083).
// Requests made meanwhile wait for the synchronization.
func (r *Runtime) BlockPluginSync() (unblock func()) {
	r.t.Helper()
	return r.adaptation().BlockPluginSync().Unblock
}

// CreateContainer relays a CreateContainer request to the plugins.
func (r *Runtime) CreateContainer(pod *api.PodSandbox, ctr *api.Container) (*api.CreateContainerResponse, error) {
	r.t.Helper()
	a := r.adaptation()
	b := a.BlockPluginSync()
	defer b.Unblock()
	return a.CreateContainer(context.Background(), &api.CreateContainerRequest{Pod: pod, Container: ctr})
}

// RunPodSandbox relays a RunPodSandbox event to the plugins.
func (r *Runtime) RunPodSandbox(pod *api.PodSandbox) error {
	r.t.Helper()
	a := r.adaptation()
	b := a.BlockPluginSync()
	defer b.Unblock()
	return a.RunPodSandbox(context.Background(), &api.RunPodSandboxRequest{Pod: pod})
}

// RemovePodSandbox relays a RemovePodSandbox event to the plugins.
func (r *Runtime) RemovePodSandbox(pod *api.PodSandbox) error {
	r.t.Helper()
	a := r.adaptation()
	b := a.BlockPluginSync()
	defer b.Unblock()
	return a.RemovePodSandbox(context.Background(), &api.RemovePodSandboxRequest{Pod: pod})
}

func (r *Runtime) adaptation() *nri.Adaptation {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.nri == nil {
		r.t.Fatal("nritest: runtime not started")
	}
	return r.nri
}

func (r *Runtime) synchronize(ctx context.Context, cb nri.SyncCB) error {
	_, err := cb(ctx, r.Pods, r.Containers)
	return err
}

func (r *Runtime) update(context.Context, []*nri.ContainerUpdate) ([]*nri.ContainerUpdate, error) {
	return nil, errors.New("nritest: unsolicited container updates are not supported")
}
