package main

// The agent side of the benchmark. On a node, the runtime that execs the
// plugins and berth-agent are separate processes, and so are they here: the
// benchmark runs itself again as "ipambench agent", which serves
// berth-ipam's socket with berth-agent's IPAM server (its own informer
// cache, its writes through the API server) and reports its figures on a
// control socket. One process for both would put the agent's goroutines
// and garbage collection in the way of the timing of the plugin execs.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrlcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/cachetrim"
)

// agentCommand is the first argument that makes ipambench the agent.
const agentCommand = "agent"

// agentStats is what the agent process reports: the totals of its ADD and
// DEL histograms and the time of each of its API writes so far.
type agentStats struct {
	Alloc, Release hist
	Writes         []time.Duration
}

// runAgent is "ipambench agent": it serves berth-ipam's socket and its
// figures until SIGTERM.
func runAgent(args []string) error {
	fs := flag.NewFlagSet(agentCommand, flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the API server")
	sock := fs.String("socket", "", "berth-ipam's socket")
	control := fs.String("control", "", "socket the benchmark reads the figures from")
	qps := fs.Float64("qps", -1, "QPS of the API client (see ipambench -agent-qps)")
	profile := fs.String("cpuprofile", "", "CPU profile written from POST /cpuprofile/start to POST /cpuprofile/stop")
	deferRelease := fs.Bool("defer-release", true, "berth-agent's --ipam-defer-release")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = float32(*qps), 0
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	reg := prometheus.NewRegistry()
	writes := &writeTimer{}
	if err := startAgent(ctx, cfg, newScheme(), *sock, *deferRelease, reg, writes); err != nil {
		return err
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		s := agentStats{Alloc: histSum(reg, "berth_agent_ipam_allocation_duration_seconds"),
			Release: histSum(reg, "berth_agent_ipam_release_duration_seconds"), Writes: writes.all()}
		_ = json.NewEncoder(w).Encode(s)
	})
	var mu sync.Mutex
	var pf *os.File
	mux.HandleFunc("POST /cpuprofile/start", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		f, err := os.Create(*profile)
		if err == nil {
			if err = pprof.StartCPUProfile(f); err != nil {
				_ = f.Close()
			}
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		pf = f
	})
	mux.HandleFunc("POST /cpuprofile/stop", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if pf == nil {
			http.Error(w, "no profile started", http.StatusConflict)
			return
		}
		pprof.StopCPUProfile()
		if err := pf.Close(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
		pf = nil
	})
	l, err := (&net.ListenConfig{}).Listen(ctx, "unix", *control)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// startAgent runs berth-agent's IPAM server as berth-agent does: its own
// informer cache, writes through the API server.
func startAgent(ctx context.Context, cfg *rest.Config, scheme *runtime.Scheme, sock string, deferRelease bool, reg prometheus.Registerer, writes *writeTimer) error {
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	ca, err := ctrlcache.New(cfg, cachetrim.Options(ctrlcache.Options{Scheme: scheme})) // as berth-agent's
	if err != nil {
		return err
	}
	if err := ipamserver.IndexClaims(ctx, ca); err != nil {
		return err
	}
	go func() { _ = ca.Start(ctx) }()
	st := &timedStore{Store: ipamserver.NewStore(ca, c, c), writes: writes}
	srv, err := ipamserver.New(ipamserver.Config{SocketPath: sock, QueueDir: filepath.Join(filepath.Dir(sock), "queue"),
		AttachmentDir: filepath.Join(filepath.Dir(sock), "attachments"), Node: benchNode,
		Store: st, Prepare: true, DeferRelease: deferRelease, PodCache: ca, Registerer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		WaitForSync: func(ctx context.Context) bool {
			for _, o := range []client.Object{&v1alpha1.IPClaim{}, &v1alpha1.IPPool{}, &corev1.Pod{}, &corev1.Namespace{}} {
				if _, err := ca.GetInformer(ctx, o); err != nil {
					return false
				}
			}
			return ca.WaitForCacheSync(ctx)
		}})
	if err != nil {
		return err
	}
	go func() {
		if err := srv.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "ipam server:", err)
		}
	}()
	ps, err := srv.Parts() // the preparer
	if err != nil {
		return err
	}
	for _, p := range ps {
		go func() { _ = p.Start(ctx) }()
	}
	for start := time.Now(); srv.Check(nil) != nil; time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > time.Minute {
			return errors.New("ipam server not ready")
		}
	}
	return nil
}

// agentProc is the agent process, as the benchmark sees it.
type agentProc struct {
	pid    int
	hc     *http.Client
	exited chan error
	kill   func() error
}

// startAgentProc starts "ipambench agent" serving sock and waits until it
// answers on its control socket.
func startAgentProc(ctx context.Context, kubeconfig, sock string, qps float64, deferRelease bool, profile string) (*agentProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	control := filepath.Join(filepath.Dir(sock), "bench-agent.sock")
	cmd := exec.CommandContext(ctx, self, agentCommand, "-kubeconfig", kubeconfig, "-socket", sock, "-control", control,
		"-qps", fmt.Sprint(qps), "-defer-release="+fmt.Sprint(deferRelease), "-cpuprofile", profile)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the agent process: %w", err)
	}
	a := &agentProc{pid: cmd.Process.Pid, exited: make(chan error, 1), kill: cmd.Process.Kill,
		hc: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", control)
			}}}}
	go func() { a.exited <- cmd.Wait() }()
	deadline := time.After(time.Minute)
	for {
		if _, err := a.stats(ctx); err == nil {
			return a, nil
		}
		select {
		case err := <-a.exited:
			return nil, fmt.Errorf("the agent process exited before it was ready: %w", err)
		case <-deadline:
			a.stop()
			return nil, errors.New("the agent process was not ready after 1m")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop ends the agent process: SIGTERM, then SIGKILL after 10 s.
func (a *agentProc) stop() {
	_ = syscall.Kill(a.pid, syscall.SIGTERM)
	var err error
	select {
	case err = <-a.exited:
	case <-time.After(10 * time.Second):
		_ = a.kill()
		err = <-a.exited
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ipambench: the agent process:", err)
	}
}

// call makes one request on the agent's control socket and returns the
// body of its answer.
func (a *agentProc) call(ctx context.Context, method, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("agent %s %s: HTTP %d: %s", method, path, resp.StatusCode, body)
	}
	return body, err
}

func (a *agentProc) stats(ctx context.Context) (agentStats, error) {
	var s agentStats
	body, err := a.call(ctx, http.MethodGet, "/stats")
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(body, &s)
}

func (a *agentProc) post(ctx context.Context, path string) error {
	_, err := a.call(ctx, http.MethodPost, path)
	return err
}

// writeTimer records the time the agent's store spends in each API write.
type writeTimer struct {
	mu  sync.Mutex
	lat []time.Duration
}

func (w *writeTimer) add(d time.Duration) {
	w.mu.Lock()
	w.lat = append(w.lat, d)
	w.mu.Unlock()
}

// all returns the time of each write so far.
func (w *writeTimer) all() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.lat)
}

// timedStore is the agent's store, timing its writes.
type timedStore struct {
	*ipamserver.Store
	writes *writeTimer
}

func (s *timedStore) Create(ctx context.Context, c *v1alpha1.IPClaim) error {
	defer s.timed()()
	return s.Store.Create(ctx, c)
}

func (s *timedStore) Update(ctx context.Context, c *v1alpha1.IPClaim) error {
	defer s.timed()()
	return s.Store.Update(ctx, c)
}

func (s *timedStore) Delete(ctx context.Context, c *v1alpha1.IPClaim) error {
	defer s.timed()()
	return s.Store.Delete(ctx, c)
}

func (s *timedStore) timed() func() {
	t0 := time.Now()
	return func() { s.writes.add(time.Since(t0)) }
}
