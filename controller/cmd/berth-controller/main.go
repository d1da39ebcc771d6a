// Command berth-controller is Berth's cluster-wide controller (one
// Deployment, leader-elected). See controller/README.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/berth-io/berth/controller"
	"github.com/berth-io/berth/controller/ipclaimgc"
	"github.com/berth-io/berth/internal/restconfig"
	"github.com/berth-io/berth/internal/version"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	var (
		cfg        controller.Config
		kubeconfig string
		showVer    bool
	)
	fs := flag.NewFlagSet("berth-controller", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.MetricsBindAddress, "metrics-bind-address", ":9480", `address to serve /metrics on; "0" disables it`)
	fs.StringVar(&cfg.HealthProbeBindAddress, "health-probe-bind-address", ":9481", "address to serve /healthz and /readyz on")
	fs.BoolVar(&cfg.LeaderElection, "leader-elect", true, "elect one active replica")
	fs.StringVar(&cfg.LeaderElectionNamespace, "leader-election-namespace", "berth-system", "namespace of the leader election lease")
	fs.DurationVar(&cfg.IPClaimGC.NodeGrace, "node-grace", ipclaimgc.DefaultNodeGrace,
		"how long a node must be gone before the addresses its pods held are reserved for their apps")
	fs.DurationVar(&cfg.IPClaimGC.AgentGrace, "agent-grace", ipclaimgc.DefaultAgentGrace,
		"how long a node's berth-agent must have been silent (its lease berth-agent-<node> not renewed) before the controller reserves or frees the addresses of that node's gone pods itself; while it renews, the agent releases them once their sandboxes are gone")
	fs.StringVar(&cfg.IPClaimGC.AgentNamespace, "agent-namespace", "berth-system", "namespace of the agents' leases")
	fs.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file; default: env KUBECONFIG, then in-cluster")
	fs.BoolVar(&showVer, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "berth-controller: unexpected arguments: %s\n", strings.Join(fs.Args(), " "))
		return 2
	}
	if showVer {
		fmt.Fprintf(stdout, "berth-controller %s\n", version.String())
		return 0
	}
	if cfg.IPClaimGC.NodeGrace <= 0 {
		fmt.Fprintf(stderr, "berth-controller: --node-grace %s: want a positive duration\n", cfg.IPClaimGC.NodeGrace)
		return 2
	}
	if cfg.IPClaimGC.AgentGrace <= 0 {
		fmt.Fprintf(stderr, "berth-controller: --agent-grace %s: want a positive duration\n", cfg.IPClaimGC.AgentGrace)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	cfg.Logger = log
	var err error
	cfg.RestConfig, err = restconfig.Load(kubeconfig)
	if err != nil {
		log.Error("cannot reach the API server", "err", err)
		return 1
	}
	if err := controller.Run(ctrl.SetupSignalHandler(), cfg); err != nil {
		log.Error("berth-controller failed", "err", err)
		return 1
	}
	return 0
}
