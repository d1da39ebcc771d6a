// Package controller runs berth-controller: every reconciler, registered in
// one list, under one controller-runtime manager with leader election.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/controller/ipclaimgc"
	"github.com/berth-io/berth/controller/ippoolstatus"
	"github.com/berth-io/berth/internal/cachetrim"
)

// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// Leader election records its events through the core API.
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch

// Config configures berth-controller.
type Config struct {
	// RestConfig reaches the API server. Required.
	RestConfig *rest.Config
	// MetricsBindAddress serves /metrics. Default ":9480"; "0" disables it.
	MetricsBindAddress string
	// HealthProbeBindAddress serves /healthz and /readyz. Default ":9481".
	HealthProbeBindAddress string
	// LeaderElection makes one replica of several active.
	LeaderElection bool
	// LeaderElectionNamespace holds the lease. Default "berth-system".
	LeaderElectionNamespace string
	// IPClaimGC configures the IP claim garbage collector.
	IPClaimGC ipclaimgc.Config
	// Logger. Default slog.Default().
	Logger *slog.Logger
}

// reconciler is what each controller package provides.
type reconciler interface {
	SetupWithManager(ctrl.Manager) error
}

// reconcilers is the list of berth-controller's reconcilers.
func reconcilers(mgr ctrl.Manager, cfg Config) (map[string]reconciler, error) {
	gc, err := ipclaimgc.New(mgr.GetClient(), cfg.IPClaimGC)
	if err != nil {
		return nil, err
	}
	ps, err := ippoolstatus.New(mgr.GetClient())
	if err != nil {
		return nil, err
	}
	return map[string]reconciler{
		ipclaimgc.ControllerName:    gc,
		ippoolstatus.ControllerName: ps,
	}, nil
}

// Run runs berth-controller until ctx is done.
func Run(ctx context.Context, cfg Config) error {
	if cfg.RestConfig == nil {
		return errors.New("no API server configuration")
	}
	if cfg.MetricsBindAddress == "" {
		cfg.MetricsBindAddress = ":9480"
	}
	if cfg.HealthProbeBindAddress == "" {
		cfg.HealthProbeBindAddress = ":9481"
	}
	if cfg.LeaderElectionNamespace == "" {
		cfg.LeaderElectionNamespace = "berth-system"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	klog.SetSlogLogger(cfg.Logger)
	ctrl.SetLogger(logr.FromSlogHandler(cfg.Logger.Handler()))

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return fmt.Errorf("scheme: %w", err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return fmt.Errorf("scheme: %w", err)
	}
	shutdown := 10 * time.Second
	mgr, err := ctrl.NewManager(cfg.RestConfig, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: cfg.MetricsBindAddress},
		HealthProbeBindAddress:  cfg.HealthProbeBindAddress,
		LeaderElection:          cfg.LeaderElection,
		LeaderElectionID:        "berth-controller",
		LeaderElectionNamespace: cfg.LeaderElectionNamespace,
		GracefulShutdownTimeout: &shutdown,
		// The cache holds every pod and claim of the cluster, and the
		// workloads and nodes they name: keep what the reconcilers read.
		Cache: cachetrim.Options(cache.Options{}),
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	rs, err := reconcilers(mgr, cfg)
	if err != nil {
		return err
	}
	for name, r := range rs {
		if err := r.SetupWithManager(mgr); err != nil {
			return fmt.Errorf("controller %s: %w", name, err)
		}
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	cfg.Logger.Info("starting berth-controller", "leader_election", cfg.LeaderElection)
	return mgr.Start(ctx)
}
