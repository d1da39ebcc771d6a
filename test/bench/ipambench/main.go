// Command ipambench measures CNI ADD then DEL through the real IPAM plugin
// binaries, the way a runtime calls them (one exec per call, config on
// stdin, CNI_* environment), at several concurrencies, against one real
// kube-apiserver and etcd: berth-ipam (with berth-agent's IPAM server in a
// process of its own, committing every claim to the API server; see
// agent.go), berth-ipam with the pods scheduled to the node first so the
// agent prepares their addresses (berth-ipam-prepared), host-local (a
// local-file floor) and Whereabouts (its Kubernetes datastore). For each
// round it also shows where the time goes: the agent's time and its API
// writes in it, and the CPU time of the plugin processes, of this process
// (the exec harness), of the agent, of kube-apiserver and of etcd. Then it
// measures berth-ipam's latency with few and with many existing claims.
// -floor, -cpuprofile and -apiserver-cpuprofile are diagnostics.
// Run it with test/bench/ipam.sh, which builds what it needs.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/berth-io/berth/api/v1alpha1"
	berthenvtest "github.com/berth-io/berth/test/envtest"
	"github.com/berth-io/berth/test/procstat"
)

func main() {
	ctrllog.SetLogger(logr.Discard())
	run := run
	if len(os.Args) > 1 && os.Args[1] == agentCommand {
		run = func() error { return runAgent(os.Args[2:]) }
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ipambench:", err)
		os.Exit(1)
	}
}

type opts struct {
	bins, crds, waCRDs string
	rbac               string
	adds               int
	conc               []int
	plugins            []string
	scale              int
	floor              int
	cpuprofile         string
	apiProfile         string
	apiProfileSeconds  int
	agentQPS           float64
	agentDeferRelease  bool
	repeat             int
	splitCPUs          bool
}

func run() error {
	var o opts
	var conc, plugins string
	flag.StringVar(&o.bins, "bin", "", "directory with berth-ipam, host-local and whereabouts")
	flag.StringVar(&o.crds, "crds", "deploy/base/crds", "Berth's CRDs")
	flag.StringVar(&o.waCRDs, "whereabouts-crds", "", "Whereabouts' CRDs (doc/crds of its module), and its RBAC (daemonset-install.yaml there)")
	flag.StringVar(&o.rbac, "rbac", "deploy/base/rbac.yaml", "berth-agent's ClusterRole and binding, which the agent process runs with")
	flag.IntVar(&o.adds, "adds", 128, "ADDs (then as many DELs) per plugin and concurrency")
	flag.IntVar(&o.repeat, "repeat", 1, "rounds of each plugin at each concurrency, the plugins interleaved; with more than 1, each plugin's ADD throughput and p99 over host-local's of the same repetition (median and range), and host-local's against itself")
	flag.StringVar(&conc, "concurrency", "1,16,64", "concurrencies")
	flag.StringVar(&plugins, "plugins", "host-local,berth-ipam,"+preparedPlugin+",whereabouts",
		"plugins to run ("+preparedPlugin+": berth-ipam for pods scheduled to the node first; other berth-ipam* names another build of berth-ipam in -bin)")
	flag.IntVar(&o.scale, "claims", 20000, "existing claims for the scale run (0: skip)")
	flag.IntVar(&o.floor, "floor", 0, "first time this many serial creates, updates and deletes of IPClaims through a plain client (0: skip)")
	flag.BoolVar(&o.agentDeferRelease, "agent-defer-release", true, "the agent answers a DEL before its release is committed, as berth-agent's --ipam-defer-release (the default); false: after")
	flag.Float64Var(&o.agentQPS, "agent-qps", -1, "QPS of the agent's API client: -1 none, as ctrl.GetConfig sets it for berth-agent in a pod; 0 client-go's default (5 QPS, burst 10, per resource), which a client made from a kubeconfig file gets unless it sets its own")
	flag.StringVar(&o.apiProfile, "apiserver-cpuprofile", "", "write a CPU profile of kube-apiserver over the first -apiserver-cpuprofile-seconds of the plugin rounds")
	flag.IntVar(&o.apiProfileSeconds, "apiserver-cpuprofile-seconds", 10, "length of the kube-apiserver CPU profile")
	flag.BoolVar(&o.splitCPUs, "split-cpus", false, "a diagnostic: kube-apiserver and etcd on the last CPU, this process, the agent and the plugins on the others, as on a cluster whose API server runs on other machines than the node's runtime (the goal is measured without)")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the agent process (berth-agent's IPAM server) over the plugin rounds")
	flag.Parse()
	if o.repeat < 1 {
		return fmt.Errorf("-repeat %d: at least 1", o.repeat)
	}
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
	if o.apiProfile != "" {
		env.ControlPlane.GetAPIServer().Configure().Set("profiling", "true")
	}
	var split string
	if o.splitCPUs {
		// Before envtest starts them, so that this process's threads are
		// the node's CPUs' only: the control plane is moved off after.
		var err error
		if split, err = pinNode(); err != nil {
			return err
		}
	}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("start kube-apiserver: %w", err)
	}
	defer func() { _ = env.Stop() }()
	if o.splitCPUs {
		if err := pinControlPlane(); err != nil {
			return err
		}
	}
	cfg.QPS, cfg.Burst = -1, 0
	work, err := os.MkdirTemp("", "ipambench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	c, err := client.NewWithWatch(cfg, client.Options{Scheme: newScheme()})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The agent and Whereabouts authenticate with ServiceAccount tokens
	// and run under their own RBAC, as in a cluster.
	agentKC, waKC := filepath.Join(work, "agent.kubeconfig"), filepath.Join(work, "whereabouts.kubeconfig")
	if err := applyRBAC(ctx, c, o.rbac); err != nil {
		return err
	}
	if err := serviceAccountKubeconfig(ctx, c, cfg, "berth-system", "berth-agent", agentKC); err != nil {
		return err
	}
	if o.waCRDs != "" {
		if err := applyRBAC(ctx, c, filepath.Join(o.waCRDs, "daemonset-install.yaml")); err != nil {
			return err
		}
		if err := serviceAccountKubeconfig(ctx, c, cfg, "kube-system", "whereabouts", waKC); err != nil {
			return err
		}
	}
	waConf := filepath.Join(work, "whereabouts.conf")
	if err := os.WriteFile(waConf, fmt.Appendf(nil, `{"datastore": "kubernetes", "kubernetes": {"kubeconfig": %q}}`, waKC), 0o600); err != nil {
		return err
	}
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

	// The agent's socket, DEL queue and attachment records live in
	// /run/berth on a node, a tmpfs: here too when /dev/shm is one.
	runPath, err := runDir(work)
	if err != nil {
		return err
	}
	defer os.RemoveAll(runPath)
	sock := filepath.Join(runPath, "ipam.sock")
	agent, err := startAgentProc(ctx, agentKC, sock, o.agentQPS, o.agentDeferRelease, o.cpuprofile)
	if err != nil {
		return err
	}
	defer agent.stop()
	// The agent here reads no CNI configuration directory
	// (--ipam-cni-conf-dir): one ADD shows it the pools to prepare from.
	for _, cmd := range []string{"ADD", "DEL"} {
		if _, err := call(ctx, cmd, filepath.Join(o.bins, "berth-ipam"), confsBerth(sock, runPath), "warmup", "pod-0"); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	// The warm-up DEL's release is deferred: let it land before the
	// first round, whose CPU and agent figures it would join.
	if _, err := waitReleased(ctx, c, "pod-0"); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}

	confs := map[string]string{
		"host-local": fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.129.0.0/16"}]]}}`,
			filepath.Join(work, "host-local")),
		"berth-ipam": confsBerth(sock, runPath),
		"whereabouts": fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "bench", "type": "bridge", "ipam": {"type": "whereabouts", "range": "10.130.0.0/16", "configuration_path": %q}}`,
			waConf),
	}
	fmt.Printf("ADD then DEL, %d each, through the plugin binaries; one kube-apiserver %s + etcd (envtest)%s\n\n", o.adds, berthenvtest.ServerVersion(cfg), split)
	if o.floor > 0 {
		if err := floor(ctx, c, o.floor); err != nil {
			return err
		}
	}
	if o.cpuprofile != "" {
		if err := agent.post(ctx, "/cpuprofile/start"); err != nil {
			return err
		}
	}
	if o.apiProfile != "" {
		done := make(chan error, 1)
		go func() { done <- apiserverProfile(ctx, cfg, o.apiProfile, o.apiProfileSeconds) }()
		defer func() {
			if err := <-done; err != nil {
				fmt.Fprintln(os.Stderr, "ipambench: kube-apiserver profile:", err)
			}
		}()
	}
	procs := processes(agent.pid)
	fmt.Println("| plugin | concurrency | ADD/s | ADD p50 | ADD p99 | DEL/s | DEL p99 | agent's mean ADD |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	var cpuRows []string
	var preps []prepRow
	var results []result
	round := 0
	for _, n := range o.conc {
		for rep := range o.repeat {
			for _, plugin := range o.plugins {
				round++
				s0, err := agent.stats(ctx)
				if err != nil {
					return err
				}
				t0 := procTimes(procs)
				conf, ok := confs[plugin]
				if !ok && strings.HasPrefix(plugin, "berth-ipam") {
					conf = confs["berth-ipam"] // another build, to compare
				}
				bin, prefix := filepath.Join(o.bins, plugin), "pod-"
				var afterAdd, afterDel func() (time.Time, error)
				if strings.HasPrefix(plugin, "berth-ipam") {
					afterDel = func() (time.Time, error) { return waitReleased(ctx, c, prefix) }
				}
				var took time.Duration
				if plugin == preparedPlugin {
					bin, prefix = filepath.Join(o.bins, "berth-ipam"), fmt.Sprintf("r%d-", round)
					if took, err = schedulePods(ctx, c, prefix, o.adds); err != nil {
						return err
					}
					afterAdd = func() (time.Time, error) { return waitRecorded(ctx, c, prefix, o.adds) }
				}
				add, del, err := measure(ctx, bin, conf, o.adds, n, round, prefix, agent, afterAdd, afterDel)
				if err != nil {
					return fmt.Errorf("%s at concurrency %d: %w", plugin, n, err)
				}
				if plugin == preparedPlugin {
					preps = append(preps, prepRow{conc: n, rep: rep, prepared: took, add: add})
					if err := c.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace("bench"), client.MatchingLabels{"round": strings.TrimSuffix(prefix, "-")}); err != nil {
						return err
					}
				}
				t1 := procTimes(procs)
				s1, err := agent.stats(ctx)
				if err != nil {
					return err
				}
				agentAdd, agentDel := s1.Alloc.mean(s0.Alloc), s1.Release.mean(s0.Release)
				fmt.Printf("| %s | %d | %.0f | %s | %s | %.0f | %s | %s |\n", plugin, n, add.rate, ms(add.p50), ms(add.p99), del.rate, ms(del.p99), agentAdd)
				per := func(d time.Duration) string { return ms(d / time.Duration(o.adds)) }
				row := fmt.Sprintf("| %s | %d | %s | %s | %s | %s | %s |", plugin, n, agentAdd, add.writeString(), agentDel, del.writeString(), per(add.cpu+del.cpu))
				total := add.cpu + del.cpu
				for i := range procs {
					row += fmt.Sprintf(" %s |", per(t1[i]-t0[i]))
					total += t1[i] - t0[i]
				}
				row += fmt.Sprintf(" %s |", per(total))
				cpuRows = append(cpuRows, row)
				results = append(results, result{plugin: plugin, conc: n, rep: rep, add: add, del: del})
			}
		}
	}
	if o.cpuprofile != "" {
		if err := agent.post(ctx, "/cpuprofile/stop"); err != nil {
			return err
		}
	}
	writeSummary(os.Stdout, results, o.plugins, o.conc, o.repeat)
	fmt.Printf("\nWhere the time goes: the agent's mean ADD and DEL, and its API writes in them (mean time per call; writes per call, p99 of one);\n")
	fmt.Printf("CPU time per ADD+DEL pair by process (bench: the exec of the plugins and the pod creates; agent: its IPAM server)\n\n")
	fmt.Println("| plugin | concurrency | agent's ADD | its writes | agent's DEL | its writes | CPU: plugin | CPU: bench | CPU: agent | CPU: kube-apiserver | CPU: etcd | CPU: total |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range cpuRows {
		fmt.Println(r)
	}
	writePrepared(os.Stdout, preps, results, o.adds)
	writeReleased(os.Stdout, results, o.adds)
	writeBudget(os.Stdout, results, o.adds, goruntime.NumCPU())

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
			add, del, err := measure(ctx, filepath.Join(o.bins, "berth-ipam"), confs["berth-ipam"], o.adds, 16, round, "pod-", agent, nil,
				func() (time.Time, error) { return waitReleased(ctx, c, "pod-") })
			if err != nil {
				return err
			}
			fmt.Printf("| %d | %.0f | %s | %s | %s |\n", target, add.rate, ms(add.p50), ms(add.p99), ms(del.p99))
		}
	}
	return nil
}

// preparedPlugin is berth-ipam for pods the agent prepared.
const preparedPlugin = "berth-ipam-prepared"

func confsBerth(sock, runPath string) string {
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "ipam": {"type": "berth-ipam", "socket": %q, "queueDir": %q}}`,
		sock, filepath.Join(runPath, "queue"))
}

// schedulePods creates n pods prefix0..n-1 bound to the agent's node, as
// the scheduler leaves them for kubelet, and waits until the agent has
// prepared a claim for each. It returns the time that took.
func schedulePods(ctx context.Context, c client.Client, prefix string, n int) (time.Duration, error) {
	start := time.Now()
	for i := range n {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("%s%d", prefix, i), Labels: map[string]string{"round": strings.TrimSuffix(prefix, "-")}},
			Spec: corev1.PodSpec{NodeName: benchNode, Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		if err := c.Create(ctx, p); err != nil {
			return 0, err
		}
	}
	for {
		var l v1alpha1.IPClaimList
		if err := c.List(ctx, &l, client.MatchingLabels{v1alpha1.LabelNode: benchNode}); err != nil {
			return 0, err
		}
		ready := 0
		for _, cl := range l.Items {
			if strings.HasPrefix(cl.Spec.Pod.Name, prefix) && cl.Spec.ContainerID == "" {
				ready++
			}
		}
		if ready == n {
			return time.Since(start), nil
		}
		if time.Since(start) > 2*time.Minute {
			return 0, fmt.Errorf("the agent prepared %d of %d pods in 2 minutes", ready, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runDir returns a new directory on a tmpfs (/dev/shm) if there is one,
// else under work.
func runDir(work string) (string, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &st); err == nil && st.Type == 0x01021994 { // TMPFS_MAGIC
		return os.MkdirTemp("/dev/shm", "ipambench-")
	}
	dir := filepath.Join(work, "run")
	return dir, os.Mkdir(dir, 0o700)
}

const benchNode = "bench-node"

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
	cpu      time.Duration // of the plugin processes
	// write is the agent's API write time per call, writeP99 the 99th
	// percentile of one write, writes the writes per call.
	write, writeP99 time.Duration
	writes          float64
	// start is when the phase began; committed how long after it its last
	// write was committed (0: not measured): for prepared ADDs, the last
	// container ID; for DELs, the last release.
	start     time.Time
	committed time.Duration
	// procCPU is the CPU time of each of processes() over the phase and
	// the wait for its commit.
	procCPU []time.Duration
	// lat is every call's latency, sorted: the summary pools them across
	// repetitions.
	lat []time.Duration
}

// quantile is the q-quantile (nearest rank) of sorted; 0 for none.
func quantile(sorted []time.Duration, q float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	return sorted[max(0, min(n-1, int(q*float64(n)+0.999999)-1))]
}

// measure runs n ADDs (pods prefix0..n-1) at concurrency conc, then their
// DELs. afterAdd and afterDel, if not nil, are waited for after each: they
// return when the phase's last write was committed (stats.committed).
func measure(ctx context.Context, bin, conf string, n, conc, round int, prefix string, agent *agentProc, afterAdd, afterDel func() (time.Time, error)) (stats, stats, error) {
	var out [2]stats
	procs := processes(agent.pid)
	for i, p := range []struct {
		cmd   string
		after func() (time.Time, error)
	}{{"ADD", afterAdd}, {"DEL", afterDel}} {
		t0 := procTimes(procs)
		st, err := phase(ctx, p.cmd, bin, conf, n, conc, round, prefix, agent)
		if err != nil {
			return stats{}, stats{}, err
		}
		if p.after != nil {
			last, err := p.after()
			if err != nil {
				return stats{}, stats{}, fmt.Errorf("after the %ss: %w", p.cmd, err)
			}
			st.committed = last.Sub(st.start)
		}
		st.procCPU = procTimes(procs)
		for j := range st.procCPU {
			st.procCPU[j] -= t0[j]
		}
		out[i] = st
	}
	return out[0], out[1], nil
}

func phase(ctx context.Context, cmd, bin, conf string, n, conc, round int, prefix string, agent *agentProc) (stats, error) {
	s0, err := agent.stats(ctx)
	if err != nil {
		return stats{}, err
	}
	lat := make([]time.Duration, n)
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	var cpu time.Duration
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t0 := time.Now()
				used, err := call(ctx, cmd, bin, conf, fmt.Sprintf("r%d-c%d", round, i), fmt.Sprintf("%s%d", prefix, i))
				lat[i] = time.Since(t0)
				mu.Lock()
				cpu += used
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
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
	st := stats{rate: float64(n) / wall.Seconds(), p50: quantile(lat, 0.5), p99: quantile(lat, 0.99), cpu: cpu, start: start, lat: lat}
	s1, err := agent.stats(ctx)
	if err != nil {
		return stats{}, err
	}
	if ws := s1.Writes[len(s0.Writes):]; len(ws) > 0 {
		var sum time.Duration
		for _, d := range ws {
			sum += d
		}
		slices.Sort(ws)
		st.write, st.writeP99, st.writes = sum/time.Duration(n), quantile(ws, 0.99), float64(len(ws))/float64(n)
	}
	return st, nil
}

// call execs the plugin once and returns the CPU time it used.
func call(ctx context.Context, cmd, bin, conf, id, pod string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, bin)
	c.Stdin = strings.NewReader(conf)
	c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_NETNS=/var/run/netns/ipambench", "CNI_IFNAME=eth0",
		"CNI_PATH=" + filepath.Dir(bin), "CNI_ARGS=IgnoreUnknown=true;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=" + pod + ";K8S_POD_INFRA_CONTAINER_ID=" + id}
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	var used time.Duration
	if c.ProcessState != nil {
		used = c.ProcessState.UserTime() + c.ProcessState.SystemTime()
	}
	if err != nil {
		return used, fmt.Errorf("%s %s: %w: %s %s", filepath.Base(bin), cmd, err, out.String(), errb.String())
	}
	return used, nil
}

// apiserverProfile writes a CPU profile of kube-apiserver (its
// /debug/pprof) over the next seconds to file.
func apiserverProfile(ctx context.Context, cfg *rest.Config, file string, seconds int) error {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", strings.TrimSuffix(cfg.Host, "/"), seconds), nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// The processes whose CPU time the benchmark reports, in this order.
const (
	procBench = iota
	procAgent
	procAPIServer
	procEtcd
)

// processes returns the pids of this process, of the agent process and of
// the kube-apiserver and etcd this process started (0 when not found).
func processes(agent int) []int {
	children := procstat.Children()
	return []int{procBench: os.Getpid(), procAgent: agent, procAPIServer: children["kube-apiserver"], procEtcd: children["etcd"]}
}

// pinNode keeps this process (and so the agent and the plugins it starts)
// off the last CPU, which pinControlPlane gives kube-apiserver and etcd.
// It returns the note for the results' heading.
func pinNode() (string, error) {
	n := goruntime.NumCPU()
	if n < 2 {
		return "", fmt.Errorf("-split-cpus: %d CPU, needs 2", n)
	}
	node := make([]int, n-1)
	for i := range node {
		node[i] = i
	}
	if err := procstat.Pin(os.Getpid(), node...); err != nil {
		return "", fmt.Errorf("-split-cpus: %w", err)
	}
	cpus := "CPU 0"
	if n > 2 {
		cpus = fmt.Sprintf("CPUs 0-%d", n-2)
	}
	return fmt.Sprintf("; -split-cpus: kube-apiserver and etcd on CPU %d, everything else on %s", n-1, cpus), nil
}

// pinControlPlane moves the kube-apiserver and etcd envtest started to the
// last CPU.
func pinControlPlane() error {
	children := procstat.Children()
	for _, name := range []string{"kube-apiserver", "etcd"} {
		pid := children[name]
		if pid == 0 {
			return fmt.Errorf("-split-cpus: no %s started by this process", name)
		}
		if err := procstat.Pin(pid, goruntime.NumCPU()-1); err != nil {
			return fmt.Errorf("-split-cpus: %w", err)
		}
	}
	return nil
}

// procTimes returns the user+system CPU time of each pid so far.
func procTimes(pids []int) []time.Duration {
	out := make([]time.Duration, len(pids))
	for i, pid := range pids {
		if pid != 0 {
			out[i] = procstat.CPU(pid)
		}
	}
	return out
}

// floor times n serial creates, then updates, then deletes of IPClaims
// shaped as the agent writes them, through a plain client: what one
// durable write costs, without berth-ipam or the allocator; with the CPU
// time kube-apiserver and etcd spend on each. Then the create again with
// variants of the request.
func floor(ctx context.Context, c client.Client, n int) error {
	procs := processes(0)
	mk := func(prefix string, labels bool) []*v1alpha1.IPClaim {
		claims := make([]*v1alpha1.IPClaim, n)
		for i := range claims {
			addr := fmt.Sprintf("10.150.%d.%d", (i+1)/256, (i+1)%256)
			uid := types.UID(fmt.Sprintf("0b7a1e4c-5d7e-4c7b-9a57-%012d", i))
			claims[i] = &v1alpha1.IPClaim{
				ObjectMeta: metav1.ObjectMeta{Name: prefix + strings.ReplaceAll(addr, ".", "-")},
				Spec: v1alpha1.IPClaimSpec{Pool: "floor", Address: addr, State: v1alpha1.ClaimBound, ContainerID: fmt.Sprintf("%064d", i),
					Interface: "eth0", Node: "bench-node", Pod: v1alpha1.PodRef{Namespace: "bench", Name: fmt.Sprintf("pod-%d", i), UID: uid}},
			}
			if labels {
				claims[i].Labels = map[string]string{v1alpha1.LabelPool: "floor", v1alpha1.LabelNode: "bench-node", v1alpha1.LabelPodUID: string(uid)}
			}
		}
		return claims
	}
	create := func(opts ...client.CreateOption) func(*v1alpha1.IPClaim) error {
		return func(cl *v1alpha1.IPClaim) error { return c.Create(ctx, cl, opts...) }
	}
	del := func(cl *v1alpha1.IPClaim) error {
		rv := cl.ResourceVersion
		return c.Delete(ctx, cl, client.Preconditions{ResourceVersion: &rv})
	}
	// Two updates per claim, as a prepared pod's claim gets (its container
	// ID, then its release), with and without the agent's managedFields
	// reset.
	updates := func(reset bool) [2]func(*v1alpha1.IPClaim) error {
		up := func(change func(*v1alpha1.IPClaim)) func(*v1alpha1.IPClaim) error {
			return func(cl *v1alpha1.IPClaim) error {
				change(cl)
				if reset {
					cl.ManagedFields = []metav1.ManagedFieldsEntry{{}}
				}
				return c.Update(ctx, cl)
			}
		}
		return [2]func(*v1alpha1.IPClaim) error{
			up(func(cl *v1alpha1.IPClaim) { cl.Spec.ContainerID = strings.Repeat("f", 64) }),
			up(func(cl *v1alpha1.IPClaim) { cl.Spec.State, cl.Spec.ContainerID = v1alpha1.ClaimReserved, "" }),
		}
	}
	reset, kept := updates(true), updates(false)
	claims, full, bare, ignore := mk("floor-", true), mk("floor-full-", true), mk("floor-bare-", false), mk("floor-ignore-", true)
	ops := []struct {
		name   string
		claims []*v1alpha1.IPClaim
		do     func(*v1alpha1.IPClaim) error
	}{
		{"create", claims, create()},
		{"update (container ID; managedFields reset, as the agent sends it)", claims, reset[0]},
		{"update again (to Reserved; reset)", claims, reset[1]},
		{"delete (at its resourceVersion)", claims, del},
		{"create", full, create()},
		{"update (container ID; managedFields kept)", full, kept[0]},
		{"update again (to Reserved; kept)", full, kept[1]},
		{"delete", full, del},
		{"create, no labels", bare, create()},
		{"delete, no labels", bare, del},
		{"create, fieldValidation=Ignore", ignore, create(client.FieldValidation("Ignore"))},
		{"delete", ignore, del},
	}
	fmt.Printf("Serial IPClaim writes through a plain controller-runtime client, %d each (in 4 blocks of all operations in turn)\n\n", n)
	fmt.Println("| operation | mean | p50 | p99 | kube-apiserver CPU | etcd CPU |")
	fmt.Println("|---|---|---|---|---|---|")
	lat := make([][]time.Duration, len(ops))
	cpu := make([][2]time.Duration, len(ops))
	const blocks = 4
	for b := range blocks {
		for i, op := range ops {
			t0 := procTimes(procs)
			for _, cl := range op.claims[b*n/blocks : (b+1)*n/blocks] {
				start := time.Now()
				if err := op.do(cl); err != nil {
					return fmt.Errorf("floor: %s %s: %w", op.name, cl.Name, err)
				}
				lat[i] = append(lat[i], time.Since(start))
			}
			t1 := procTimes(procs)
			cpu[i][0] += t1[procAPIServer] - t0[procAPIServer]
			cpu[i][1] += t1[procEtcd] - t0[procEtcd]
		}
	}
	for i, op := range ops {
		l := lat[i]
		var sum time.Duration
		for _, d := range l {
			sum += d
		}
		slices.Sort(l)
		fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", op.name, ms(sum/time.Duration(len(l))), ms(quantile(l, 0.5)), ms(quantile(l, 0.99)),
			ms(cpu[i][0]/time.Duration(len(l))), ms(cpu[i][1]/time.Duration(len(l))))
	}
	// The size of a claim as stored, then.
	cl := mk("floor-size-", true)[0]
	if err := c.Create(ctx, cl); err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	all, _ := json.Marshal(cl)
	trimmed := cl.DeepCopy()
	trimmed.ManagedFields = nil
	without, _ := json.Marshal(trimmed)
	if err := reset[0](cl); err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	updated, _ := json.Marshal(cl)
	fmt.Printf("\nA claim as the agent creates it is %d bytes of JSON, %d of them managedFields; after the agent's first update, %d bytes.\n\n",
		len(all), len(all)-len(without), len(updated))
	return del(cl)
}

type hist struct {
	Sum float64
	N   uint64
}

// mean is the mean observation since h0, "-" when none.
func (h hist) mean(h0 hist) string {
	if h.N <= h0.N {
		return "-"
	}
	return ms(time.Duration((h.Sum - h0.Sum) / float64(h.N-h0.N) * float64(time.Second)))
}

// histSum reads one of the agent's histograms: total seconds and count.
func histSum(g prometheus.Gatherer, name string) hist {
	mfs, err := g.Gather()
	if err != nil {
		return hist{}
	}
	var h hist
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			h.Sum += m.GetHistogram().GetSampleSum()
			h.N += m.GetHistogram().GetSampleCount()
		}
	}
	return h
}

func (s stats) writeString() string {
	if s.writes == 0 {
		return "-"
	}
	return fmt.Sprintf("%s (%.2f, p99 %s)", ms(s.write), s.writes, ms(s.writeP99))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func newScheme() *runtime.Scheme {
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	return scheme
}
