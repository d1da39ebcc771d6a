// Package agent runs berth-agent, the node agent: each long-running part
// is a runnable under one controller-runtime manager, which also serves
// /metrics, /healthz and /readyz and stops everything on shutdown.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/berth-io/berth/agent/crisandbox"
	"github.com/berth-io/berth/agent/ipamserver"
	"github.com/berth-io/berth/agent/logdirs"
	"github.com/berth-io/berth/agent/nriplugin"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/agentlease"
	"github.com/berth-io/berth/internal/cachetrim"
	"github.com/berth-io/berth/internal/parts"
	"github.com/berth-io/berth/internal/version"
)

// Defaults for Config.
const (
	DefaultMetricsBindAddress     = ":9470"
	DefaultHealthProbeBindAddress = ":9471"
	DefaultShutdownTimeout        = 10 * time.Second
)

// Name is the agent's name as a component: the reporting controller of its
// Events.
const Name = "berth-agent"

// Config configures the agent.
type Config struct {
	// RestConfig reaches the API server. Required.
	RestConfig *rest.Config
	// NodeName is the node the agent runs on (the downward API's
	// spec.nodeName). Without it, no Events are recorded on the Node.
	NodeName string
	// MetricsBindAddress serves /metrics. Default ":9470"; "0" disables it.
	MetricsBindAddress string
	// HealthProbeBindAddress serves /healthz and /readyz. Default ":9471";
	// "0" disables it.
	HealthProbeBindAddress string
	// ShutdownTimeout bounds how long runnables get to stop once the
	// context is done. Default 10s.
	ShutdownTimeout time.Duration
	// NRI configures the NRI plugin. Its Registerer and OnStateChange are
	// set by Run, its Hooks too (agent/hooks.go).
	NRI nriplugin.Config
	// FileLogs configures KUBERNETES_FILELOGS (the filelogs hook and log
	// retention); nil disables it. Its Registerer, Recorder and Logger are
	// set by Run.
	FileLogs *logdirs.Config
	// IPAM configures the IPAM server (berth-ipam's socket); nil disables
	// it. Its Node, Registerer, Recorder and Logger are set by Run.
	IPAM *ipamserver.Config
	// CRIEndpoint is the runtime's CRI socket, from which the IPAM server
	// lists the node's pod sandboxes to sweep its claims (see
	// ipamserver's gc.go). "" disables the sweep.
	CRIEndpoint string
	// Namespace is the agent's namespace, where it renews its lease (see
	// internal/agentlease) while IPAM runs. Default "berth-system".
	Namespace string
	// Logger receives all logs, including those of client-go,
	// controller-runtime and the NRI stub. Default slog.Default().
	Logger *slog.Logger
}

// Run runs the agent until ctx is done, then stops its parts within
// ShutdownTimeout. It sets the process-wide loggers of klog and
// controller-runtime to cfg.Logger.
func Run(ctx context.Context, cfg Config) error {
	if cfg.RestConfig == nil {
		return errors.New("no API server configuration")
	}
	if cfg.MetricsBindAddress == "" {
		cfg.MetricsBindAddress = DefaultMetricsBindAddress
	}
	if cfg.HealthProbeBindAddress == "" {
		cfg.HealthProbeBindAddress = DefaultHealthProbeBindAddress
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := cfg.Logger

	klog.SetSlogLogger(log)
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))

	if err := registerMetrics(ctrlmetrics.Registry); err != nil {
		return err
	}

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return fmt.Errorf("scheme: %w", err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return fmt.Errorf("scheme: %w", err)
	}
	mgr, err := manager.New(cfg.RestConfig, manager.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: cfg.MetricsBindAddress},
		HealthProbeBindAddress:  cfg.HealthProbeBindAddress,
		LeaderElection:          false, // one agent per node: nothing to elect
		GracefulShutdownTimeout: &cfg.ShutdownTimeout,
		// The agent reads, never applies: without managedFields its cache is
		// smaller (a claim's 1005 bytes of JSON hold 427 of them); of the
		// cluster's pods and ReplicaSets it keeps what IPAM reads.
		Cache: cachetrim.Options(cache.Options{}),
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}

	partMetrics, err := parts.NewMetrics(ctrlmetrics.Registry)
	if err != nil {
		return err
	}

	nriCfg := cfg.NRI
	nriCfg.Registerer = ctrlmetrics.Registry
	if nriCfg.Logger == nil {
		nriCfg.Logger = log
	}
	if cfg.NodeName != "" {
		nriCfg.OnStateChange = nodeEvents(mgr.GetEventRecorder(Name), cfg.NodeName)
	}
	var fileLogs *logdirs.Manager
	if cfg.FileLogs != nil {
		flCfg := *cfg.FileLogs
		flCfg.Registerer, flCfg.Recorder = ctrlmetrics.Registry, mgr.GetEventRecorder(Name)
		if flCfg.Logger == nil {
			flCfg.Logger = log
		}
		if fileLogs, err = logdirs.New(flCfg); err != nil {
			return fmt.Errorf("file logs: %w", err)
		}
		if err := addPart(mgr, partMetrics, parts.Config{Name: "filelogs-retention", Run: fileLogs.Start, Logger: log}); err != nil {
			return fmt.Errorf("file logs: %w", err)
		}
	}
	nriCfg.Hooks = append(hooks(fileLogs), nriCfg.Hooks...)
	nri, err := nriplugin.New(nriCfg)
	if err != nil {
		return fmt.Errorf("nri plugin: %w", err)
	}
	if err := mgr.Add(nri); err != nil {
		return fmt.Errorf("nri plugin: %w", err)
	}

	if cfg.IPAM != nil {
		ipamCfg := *cfg.IPAM
		ipamCfg.Node, ipamCfg.Registerer, ipamCfg.Recorder = cfg.NodeName, ctrlmetrics.Registry, mgr.GetEventRecorder(Name)
		if ipamCfg.Logger == nil {
			ipamCfg.Logger = log.With("part", "ipam")
		}
		if cfg.CRIEndpoint != "" {
			lister, err := crisandbox.New(crisandbox.Config{Endpoint: cfg.CRIEndpoint})
			if err != nil {
				return fmt.Errorf("ipam server: %w", err)
			}
			defer func() { _ = lister.Close() }()
			ipamCfg.Sandboxes = lister
		}
		if err := addLeaseRenewer(mgr, partMetrics, cfg); err != nil {
			return err
		}
		srv, err := ipamserver.NewForManager(ctx, mgr, ipamCfg)
		if err != nil {
			return fmt.Errorf("ipam server: %w", err)
		}
		if err := mgr.Add(srv); err != nil {
			return fmt.Errorf("ipam server: %w", err)
		}
		if err := mgr.AddReadyzCheck("ipam", srv.Check); err != nil {
			return fmt.Errorf("readyz: %w", err)
		}
		ps, err := srv.Parts()
		if err != nil {
			return fmt.Errorf("ipam server: %w", err)
		}
		for _, p := range ps {
			if err := addRunnablePart(mgr, p); err != nil {
				return err
			}
		}
	}

	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return fmt.Errorf("healthz: %w", err)
	}
	if err := mgr.AddReadyzCheck("nri", nri.Check); err != nil {
		return fmt.Errorf("readyz: %w", err)
	}

	log.Info("starting berth-agent", "version", version.Version, "commit", version.Commit,
		"node", cfg.NodeName, "metrics_address", cfg.MetricsBindAddress,
		"health_probe_address", cfg.HealthProbeBindAddress)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	log.Info("stopped berth-agent")
	return nil
}

// addPart adds a part (internal/parts) to mgr, with its readyz check.
func addPart(mgr manager.Manager, m *parts.Metrics, cfg parts.Config) error {
	cfg.Metrics = m
	p, err := parts.New(cfg)
	if err != nil {
		return err
	}
	return addRunnablePart(mgr, p)
}

func addRunnablePart(mgr manager.Manager, p *parts.Part) error {
	if err := mgr.Add(p); err != nil {
		return fmt.Errorf("%s: %w", p.Name(), err)
	}
	if err := mgr.AddReadyzCheck(p.Name(), p.Check); err != nil {
		return fmt.Errorf("readyz: %w", err)
	}
	return nil
}

// addLeaseRenewer adds the runnable that renews the node's agent lease,
// which tells berth-controller that this agent looks after the node's IP
// claims.
func addLeaseRenewer(mgr manager.Manager, m *parts.Metrics, cfg Config) error {
	cs, err := kubernetes.NewForConfig(cfg.RestConfig)
	if err != nil {
		return fmt.Errorf("agent lease: %w", err)
	}
	r, err := agentlease.New(agentlease.Config{Leases: cs.CoordinationV1(), Namespace: cfg.Namespace, Node: cfg.NodeName,
		Logger: cfg.Logger.With("part", "lease")})
	if err != nil {
		return err
	}
	return addPart(mgr, m, parts.Config{Name: "agent-lease", Run: r.Start, Logger: cfg.Logger})
}

// nodeEvents records the NRI connection's changes as Events on the Node,
// where `kubectl describe node` shows them.
func nodeEvents(rec recorder.EventRecorder, nodeName string) func(nriplugin.State) {
	// Kubelet's convention: a Node's event reference uses its name as UID.
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, UID: types.UID(nodeName)}}
	return func(s nriplugin.State) {
		if s.Connected {
			rec.Eventf(node, nil, corev1.EventTypeNormal, "NRIConnected", "Connect",
				"%s connected to %s %s over NRI", Name, s.Runtime, s.RuntimeVersion)
			return
		}
		rec.Eventf(node, nil, corev1.EventTypeWarning, "NRIConnectionLost", "Disconnect",
			"%s lost its NRI connection to %s %s; containers created until it reconnects miss Berth's hooks",
			Name, s.Runtime, s.RuntimeVersion)
	}
}
