// Command ipambench measures CNI ADD then DEL through the real IPAM plugin
// binaries, the way a runtime calls them (one exec per call, config on
// stdin, CNI_* environment), at several concurrencies, against one real
// kube-apiserver and etcd: berth-ipam (with berth-agent's IPAM server
// in-process, committing every claim to the API server), host-local (a
// local-file floor) and Whereabouts (its Kubernetes datastore). Then it
// measures berth-ipam's latency with few and with many existing claims.
// Run it with test/bench/ipam.sh, which builds what it needs.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrlcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/api/v1alpha1"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ipambench:", err)
		os.Exit(1)
	}
}

type opts struct {
	bins, crds, waCRDs string
	adds               int
	conc               []int
	plugins            []string
	scale              int
}

func run() error {
	ctrllog.SetLogger(logr.Discard())
	var o opts
	var conc, plugins string
	flag.StringVar(&o.bins, "bin", "", "directory with berth-ipam, host-local and whereabouts")
	flag.StringVar(&o.crds, "crds", "deploy/base/crds", "Berth's CRDs")
	flag.StringVar(&o.waCRDs, "whereabouts-crds", "", "Whereabouts' CRDs (doc/crds of its module)")
	flag.IntVar(&o.adds, "adds", 128, "ADDs (then as many DELs) per plugin and concurrency")
	flag.StringVar(&conc, "concurrency", "1,16,64", "concurrencies")
	flag.StringVar(&plugins, "plugins", "host-local,berth-ipam,whereabouts", "plugins to run")
	flag.IntVar(&o.scale, "claims", 20000, "existing claims for the scale run (0: skip)")
	flag.Parse()
	for _, s := range strings.Split(conc, ",") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return fmt.Errorf("-concurrency %q", conc)
		}
		o.conc = append(o.conc, n)
	}
	o.plugins = strings.Split(plugins, ",")

	env := &envtest.Environment{BinaryAssetsDirectory: os.Getenv("KUBEBUILDER_ASSETS"), ErrorIfCRDPathMissing: true,
		CRDDirectoryPaths: []string{o.crds}}
	if o.waCRDs != "" {
		env.CRDDirectoryPaths = append(env.CRDDirectoryPaths, o.waCRDs)
	}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("start kube-apiserver: %w", err)
	}
	defer func() { _ = env.Stop() }()
	cfg.QPS, cfg.Burst = -1, 0
	user, err := env.AddUser(envtest.User{Name: "bench", Groups: []string{"system:masters"}}, cfg)
	if err != nil {
		return err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "ipambench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := os.WriteFile(filepath.Join(work, "kubeconfig"), kc, 0o600); err != nil {
		return err
	}
	waConf := filepath.Join(work, "whereabouts.conf")
	if err := os.WriteFile(waConf, fmt.Appendf(nil, `{"datastore": "kubernetes", "kubernetes": {"kubeconfig": %q}}`, filepath.Join(work, "kubeconfig")), 0o600); err != nil {
		return err
	}

	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}); err != nil {
		return err
	}
	if err := c.Create(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "bench"},
		Spec: v1alpha1.IPPoolSpec{CIDR: "10.128.0.0/16", Gateway: "10.128.0.1"}}); err != nil {
		return err
	}
	// The pods every plugin is called for (berth-ipam reads them).
	for i := range o.adds {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("pod-%d", i)},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		if err := c.Create(ctx, p); err != nil {
			return err
		}
	}

	sock := filepath.Join(work, "ipam.sock")
	reg := prometheus.NewRegistry()
	if err := startAgent(ctx, cfg, scheme, c, sock, reg); err != nil {
		return err
	}

	confs := map[string]string{
		"host-local": fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.129.0.0/16"}]]}}`,
			filepath.Join(work, "host-local")),
		"berth-ipam": fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "ipam": {"type": "berth-ipam", "socket": %q, "queueDir": %q}}`,
			sock, filepath.Join(work, "queue")),
		"whereabouts": fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "bench", "type": "bridge", "ipam": {"type": "whereabouts", "range": "10.130.0.0/16", "configuration_path": %q}}`,
			waConf),
	}
	fmt.Printf("ADD then DEL, %d each, through the plugin binaries; one kube-apiserver %s + etcd (envtest)\n\n", o.adds, serverVersion(cfg))
	fmt.Println("| plugin | concurrency | ADD/s | ADD p50 | ADD p99 | DEL/s | DEL p99 | agent's mean ADD |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	round := 0
	for _, n := range o.conc {
		for _, plugin := range o.plugins {
			round++
			sum0, n0 := allocSum(reg)
			add, del, err := measure(ctx, filepath.Join(o.bins, plugin), confs[plugin], o.adds, n, round)
			if err != nil {
				return fmt.Errorf("%s at concurrency %d: %w", plugin, n, err)
			}
			agent := "-"
			if sum1, n1 := allocSum(reg); n1 > n0 {
				agent = ms(time.Duration((sum1 - sum0) / float64(n1-n0) * float64(time.Second)))
			}
			fmt.Printf("| %s | %d | %.0f | %s | %s | %.0f | %s | %s |\n", plugin, n, add.rate, ms(add.p50), ms(add.p99), del.rate, ms(del.p99), agent)
		}
	}

	if o.scale > 0 && slices.Contains(o.plugins, "berth-ipam") {
		fmt.Printf("\nberth-ipam with existing claims (other pool addresses; concurrency 16)\n\n")
		fmt.Println("| existing claims | ADD/s | ADD p50 | ADD p99 | DEL p99 |")
		fmt.Println("|---|---|---|---|---|")
		have := 0
		for _, target := range []int{100, o.scale} {
			if err := fillClaims(ctx, c, have, target); err != nil {
				return err
			}
			have = target
			time.Sleep(15 * time.Second) // let the agent's cache and the API server settle
			round++
			add, del, err := measure(ctx, filepath.Join(o.bins, "berth-ipam"), confs["berth-ipam"], o.adds, 16, round)
			if err != nil {
				return err
			}
			fmt.Printf("| %d | %.0f | %s | %s | %s |\n", target, add.rate, ms(add.p50), ms(add.p99), ms(del.p99))
		}
	}
	return nil
}

func serverVersion(cfg *rest.Config) string {
	d, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return "?"
	}
	v, err := d.ServerVersion()
	if err != nil {
		return "?"
	}
	return v.GitVersion
}

// startAgent runs berth-agent's IPAM server in-process: its own informer
// cache, writes through the API server.
func startAgent(ctx context.Context, cfg *rest.Config, scheme *runtime.Scheme, c client.Client, sock string, reg prometheus.Registerer) error {
	ca, err := ctrlcache.New(cfg, ctrlcache.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	if err := ipamserver.IndexClaims(ctx, ca); err != nil {
		return err
	}
	go func() { _ = ca.Start(ctx) }()
	st := ipamserver.NewStore(ca, c, c)
	srv, err := ipamserver.New(ipamserver.Config{SocketPath: sock, QueueDir: filepath.Join(filepath.Dir(sock), "queue"),
		AttachmentDir: filepath.Join(filepath.Dir(sock), "attachments"), Node: "bench-node",
		Store: st, Registerer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
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
	for start := time.Now(); srv.Check(nil) != nil; time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > time.Minute {
			return errors.New("ipam server not ready")
		}
	}
	return nil
}

// fillClaims creates claims up to n in a pool of their own.
func fillClaims(ctx context.Context, c client.Client, from, to int) error {
	if from == 0 {
		if err := c.Create(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "filler"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.140.0.0/16"}}); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				addr := fmt.Sprintf("10.140.%d.%d", (i+1)/256, (i+1)%256)
				cl := &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: "filler-" + strings.ReplaceAll(addr, ".", "-")},
					Spec: v1alpha1.IPClaimSpec{Pool: "filler", Address: addr, State: v1alpha1.ClaimReserved,
						App: &v1alpha1.App{Kind: v1alpha1.AppGroup, Namespace: "bench", Name: fmt.Sprintf("g%d", i%500)},
						Pod: v1alpha1.PodRef{Namespace: "bench", Name: "old", UID: "u"}}}
				if err := c.Create(ctx, cl); err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			}
		}()
	}
	for i := from; i < to; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errc:
		return fmt.Errorf("fill claims: %w", err)
	default:
		return nil
	}
}

type stats struct {
	rate     float64
	p50, p99 time.Duration
}

// measure runs n ADDs (pods 0..n-1) at concurrency conc, then their DELs.
func measure(ctx context.Context, bin, conf string, n, conc, round int) (stats, stats, error) {
	add, err := phase(ctx, "ADD", bin, conf, n, conc, round)
	if err != nil {
		return stats{}, stats{}, err
	}
	del, err := phase(ctx, "DEL", bin, conf, n, conc, round)
	return add, del, err
}

func phase(ctx context.Context, cmd, bin, conf string, n, conc, round int) (stats, error) {
	lat := make([]time.Duration, n)
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t0 := time.Now()
				err := call(ctx, cmd, bin, conf, fmt.Sprintf("r%d-c%d", round, i), fmt.Sprintf("pod-%d", i))
				lat[i] = time.Since(t0)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	wall := time.Since(start)
	if firstErr != nil {
		return stats{}, firstErr
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[max(0, min(n-1, int(p*float64(n)+0.999999)-1))] }
	return stats{rate: float64(n) / wall.Seconds(), p50: q(0.5), p99: q(0.99)}, nil
}

func call(ctx context.Context, cmd, bin, conf, id, pod string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, bin)
	c.Stdin = strings.NewReader(conf)
	c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_NETNS=/var/run/netns/ipambench", "CNI_IFNAME=eth0",
		"CNI_PATH=" + filepath.Dir(bin), "CNI_ARGS=IgnoreUnknown=true;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=" + pod + ";K8S_POD_INFRA_CONTAINER_ID=" + id}
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s %s", filepath.Base(bin), cmd, err, out.String(), errb.String())
	}
	return nil
}

// allocSum reads the agent's ADD histogram: total seconds and count.
func allocSum(g prometheus.Gatherer) (float64, uint64) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, 0
	}
	var sum float64
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() != "berth_ipam_allocation_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetHistogram().GetSampleSum()
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return sum, n
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
