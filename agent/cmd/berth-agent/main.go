// Command berth-agent is Berth's node agent, run by a DaemonSet on each node.
// See agent/README.md.
package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/berth-io/berth/agent"
	"github.com/berth-io/berth/agent/crisandbox"
	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/agent/logdirs"
	"github.com/berth-io/berth/agent/nriplugin"
	"github.com/berth-io/berth/internal/agentlease"
	"github.com/berth-io/berth/internal/ipalloc"
	"github.com/berth-io/berth/internal/restconfig"
	"github.com/berth-io/berth/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is main with its inputs and outputs passed in; it returns the exit
// code: 0 done, 1 failed, 2 bad usage.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "install-cni" {
		return runInstallCNI(args[1:], stdout, stderr)
	}
	opts, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "berth-agent: %v\n", err)
		return 2
	}
	if opts.version {
		fmt.Fprintf(stdout, "berth-agent %s\n", version.String())
		return 0
	}

	log := newLogger(stderr, opts.logLevel, opts.logFormat)
	slog.SetDefault(log)
	restCfg, err := restconfig.Load(opts.kubeconfig)
	if err != nil {
		log.Error("cannot reach the API server", "err", err)
		return 1
	}
	opts.agent.RestConfig = restCfg
	opts.agent.Logger = log
	if err := agent.Run(ctrl.SetupSignalHandler(), opts.agent); err != nil {
		log.Error("berth-agent failed", "err", err)
		return 1
	}
	return 0
}

type options struct {
	agent      agent.Config
	kubeconfig string
	logLevel   slog.Level
	logFormat  string
	version    bool
}

// parseFlags reads args into options; environment variables named in the
// flag help are the defaults of their flags.
func parseFlags(args []string, getenv func(string) string, output io.Writer) (options, error) {
	var (
		o           options
		nriIndex    int
		level       string
		ipamSocket  string
		ipamEarly   bool
		ipamPrep    bool
		ipamDefer   bool
		ipamConfDir string
		ipamSweep   time.Duration
		ipamGCShare float64
		ipamQuar    time.Duration
		fileLogs    logdirs.Config
		sizeLimit   = quantityFlag{q: *resource.NewQuantity(logdirs.DefaultSizeLimit, resource.BinarySI)}
		maxLimit    = quantityFlag{q: *resource.NewQuantity(logdirs.DefaultMaxSizeLimit, resource.BinarySI)}
	)
	fs := flag.NewFlagSet("berth-agent", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&o.agent.NRI.SocketPath, "nri-socket", nriplugin.DefaultSocketPath,
		"the container runtime's NRI socket")
	fs.StringVar(&o.agent.NRI.PluginName, "nri-plugin-name", nriplugin.DefaultPluginName,
		"name to register with NRI as")
	fs.IntVar(&nriIndex, "nri-plugin-index", nriplugin.DefaultPluginIndex,
		"NRI plugin index, 0 to 99; plugins with lower indexes run first")
	fs.StringVar(&o.agent.MetricsBindAddress, "metrics-bind-address", agent.DefaultMetricsBindAddress,
		`address to serve /metrics on; "0" disables it`)
	fs.StringVar(&o.agent.HealthProbeBindAddress, "health-probe-bind-address", agent.DefaultHealthProbeBindAddress,
		`address to serve /healthz and /readyz on; "0" disables it`)
	fs.StringVar(&o.agent.NodeName, "node-name", getenv("NODE_NAME"),
		"name of this node, for Events on it (env NODE_NAME)")
	fs.StringVar(&ipamSocket, "ipam-socket", "",
		`unix socket to serve berth-ipam on, e.g. /run/berth/ipam.sock; "" disables the IPAM server`)
	fs.StringVar(&fileLogs.Root, "filelogs-root", logdirs.DefaultRoot,
		`host directory for KUBERNETES_FILELOGS, the same path inside the agent; "" disables file logs`)
	fs.DurationVar(&fileLogs.Retention, "filelogs-retention", logdirs.DefaultRetention,
		"how long file logs are kept: older files, and directories of pods gone this long, are removed")
	fs.DurationVar(&fileLogs.Interval, "filelogs-retention-interval", logdirs.DefaultInterval,
		"time between retention passes over --filelogs-root")
	fs.Var(&sizeLimit, "filelogs-size-limit",
		"size limit of one container's file logs (all its log directories together), a Kubernetes quantity; a pass that finds a container over it removes its oldest files; a pod may ask for another with the annotation berth.io/filelogs-size-limit")
	fs.Var(&maxLimit, "filelogs-max-size-limit",
		"the largest size limit a pod may ask for with berth.io/filelogs-size-limit, a Kubernetes quantity, at least --filelogs-size-limit")
	fs.BoolVar(&ipamEarly, "ipam-early-release", false,
		"release the addresses of terminating pods annotated berth.io/ip-release: early before their teardown (needs CAP_NET_ADMIN, CAP_SYS_ADMIN and /var/run/netns)")
	fs.BoolVar(&ipamPrep, "ipam-prepare", true,
		"allocate a pod's addresses (eth0) as soon as it is scheduled to the node, so that the runtime's ADD makes no API write before it answers")
	fs.BoolVar(&ipamDefer, "ipam-defer-release", true,
		"answer a DEL once it is recorded in /run/berth/ipam-del-queue and release its addresses in the API server right after; false: answer once they are released")
	fs.StringVar(&ipamConfDir, "ipam-cni-conf-dir", "",
		`the runtime's CNI configuration directory as mounted in the agent (read only), e.g. /host/etc/cni/net.d: --ipam-prepare takes the pools of its default network from there until the first ADD; "" waits for that ADD`)
	fs.StringVar(&o.agent.CRIEndpoint, "cri-endpoint", crisandbox.DefaultEndpoint,
		`the runtime's CRI socket (CRI-O: unix:///var/run/crio/crio.sock): the IPAM server lists the node's pod sandboxes there and releases the claims of those gone; "" disables that sweep`)
	fs.DurationVar(&ipamSweep, "ipam-sweep-interval", ipamserver.DefaultSweepInterval,
		"time between sweeps of the node's IP claims against the runtime's pod sandboxes (--cri-endpoint)")
	fs.Float64Var(&ipamGCShare, "ipam-gc-max-share", ipalloc.DefaultGCMaxShare,
		fmt.Sprintf("share of the node's held IP claims that one garbage collection (CNI GC or a sweep) may release at once (at least %d): a larger one is refused as a truncated list, with an Event on the Node", ipalloc.DefaultGCMinRefuse))
	fs.StringVar(&o.agent.Namespace, "namespace", cmp.Or(getenv("POD_NAMESPACE"), agentlease.DefaultNamespace),
		"the agent's namespace, where it renews its lease berth-agent-<node> (env POD_NAMESPACE)")
	fs.DurationVar(&ipamQuar, "ipam-conflict-quarantine", ipamserver.DefaultConflictQuarantine,
		"how long an address berth-netcheck found in use by another host stays out of use (IPClaim state Conflict) before berth-controller frees it")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "",
		"kubeconfig file; default: env KUBECONFIG, then in-cluster, then ~/.kube/config")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if nriIndex < 0 || nriIndex > 99 {
		return o, fmt.Errorf("--nri-plugin-index %d: want 0 to 99", nriIndex)
	}
	o.agent.NRI.PluginIndex = &nriIndex
	if ipamSocket != "" {
		if !filepath.IsAbs(ipamSocket) {
			return o, fmt.Errorf("--ipam-socket %q: want an absolute path", ipamSocket)
		}
		if o.agent.NodeName == "" {
			return o, errors.New("--ipam-socket needs --node-name (env NODE_NAME): claims record their node")
		}
		if ipamConfDir != "" && !filepath.IsAbs(ipamConfDir) {
			return o, fmt.Errorf("--ipam-cni-conf-dir %q: want an absolute path", ipamConfDir)
		}
		if ipamSweep <= 0 {
			return o, fmt.Errorf("--ipam-sweep-interval %s: want > 0", ipamSweep)
		}
		if ipamGCShare <= 0 || ipamGCShare > 1 {
			return o, fmt.Errorf("--ipam-gc-max-share %g: want a share in (0, 1]", ipamGCShare)
		}
		if ipamQuar <= 0 {
			return o, fmt.Errorf("--ipam-conflict-quarantine %s: want > 0", ipamQuar)
		}
		o.agent.IPAM = &ipamserver.Config{SocketPath: ipamSocket, EarlyRelease: ipamEarly, Prepare: ipamPrep, CNIConfDir: ipamConfDir,
			DeferRelease: ipamDefer, SweepInterval: ipamSweep, GCMaxShare: ipamGCShare,
			ConflictQuarantine: ipamQuar}
	}
	if fileLogs.Root != "" {
		if !filepath.IsAbs(fileLogs.Root) || filepath.Clean(fileLogs.Root) != fileLogs.Root {
			return o, fmt.Errorf("--filelogs-root %q: want an absolute, clean path", fileLogs.Root)
		}
		if fileLogs.Retention <= 0 {
			return o, fmt.Errorf("--filelogs-retention %s: want > 0", fileLogs.Retention)
		}
		if fileLogs.Interval <= 0 {
			return o, fmt.Errorf("--filelogs-retention-interval %s: want > 0", fileLogs.Interval)
		}
		var err error
		if fileLogs.SizeLimit, err = sizeLimit.bytes("--filelogs-size-limit"); err != nil {
			return o, err
		}
		if fileLogs.MaxSizeLimit, err = maxLimit.bytes("--filelogs-max-size-limit"); err != nil {
			return o, err
		}
		if fileLogs.MaxSizeLimit < fileLogs.SizeLimit {
			return o, fmt.Errorf("--filelogs-max-size-limit %s: want at least --filelogs-size-limit, %s",
				maxLimit.String(), sizeLimit.String())
		}
		o.agent.FileLogs = &fileLogs
	}
	if err := o.logLevel.UnmarshalText([]byte(level)); err != nil || strings.ContainsAny(level, "+-") {
		return o, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return o, fmt.Errorf("--log-format %q: want text or json", o.logFormat)
	}
	return o, nil
}

func newLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	hopts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, hopts))
	}
	return slog.New(slog.NewTextHandler(w, hopts))
}

// quantityFlag is a flag whose value is a Kubernetes quantity.
type quantityFlag struct{ q resource.Quantity }

func (f *quantityFlag) String() string { return f.q.String() }

func (f *quantityFlag) Set(s string) error {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return errors.New(`want a Kubernetes quantity, e.g. "500Mi" or "2Gi"`)
	}
	f.q = q
	return nil
}

// bytes returns the quantity as a whole number of bytes above 0.
func (f *quantityFlag) bytes(name string) (int64, error) {
	n := f.q.Value()
	if f.q.Sign() <= 0 || f.q.Cmp(*resource.NewQuantity(n, resource.BinarySI)) != 0 {
		return 0, fmt.Errorf("%s %s: want a whole number of bytes above 0", name, f.q.String())
	}
	return n, nil
}
