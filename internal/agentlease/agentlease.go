// Package agentlease is berth-agent's heartbeat: one coordination.k8s.io
// Lease per node, renewed by the node's agent while it runs, and read by
// berth-controller to tell whether a node's agent still looks after the
// node's IP claims (it releases them once their sandboxes are gone) or has
// been silent long enough for the controller to act in its place.
package agentlease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/utils/ptr"
)

// Defaults.
const (
	DefaultNamespace     = "berth-system"
	DefaultRenewInterval = 10 * time.Second
)

// Name is the name of node's agent lease.
func Name(node string) string { return "berth-agent-" + node }

// LastRenewed is when the lease was last renewed (or acquired); zero if it
// says neither.
func LastRenewed(l *coordinationv1.Lease) time.Time {
	switch {
	case l.Spec.RenewTime != nil:
		return l.Spec.RenewTime.Time
	case l.Spec.AcquireTime != nil:
		return l.Spec.AcquireTime.Time
	}
	return time.Time{}
}

// Config configures a Renewer.
type Config struct {
	// Leases reaches the API server. Required.
	Leases coordinationclient.LeasesGetter
	// Namespace of the lease. Default DefaultNamespace.
	Namespace string
	// Node whose agent renews. Required.
	Node string
	// Interval between renewals. Default DefaultRenewInterval.
	Interval time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger. Default slog.Default().
	Logger *slog.Logger
}

// Renewer renews the node's agent lease every Interval until its context
// ends; it is a manager.Runnable. A failed renewal is logged and tried
// again at the next tick: the controller tolerates silences shorter than
// its grace period.
type Renewer struct {
	cfg Config
}

// New validates cfg and returns a Renewer.
func New(cfg Config) (*Renewer, error) {
	if cfg.Leases == nil {
		return nil, errors.New("agent lease: no client")
	}
	if cfg.Node == "" {
		return nil, errors.New("agent lease: no node name")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultRenewInterval
	}
	if cfg.Interval < 0 {
		return nil, fmt.Errorf("agent lease: interval %s: want a positive duration", cfg.Interval)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Renewer{cfg: cfg}, nil
}

// Start renews until ctx is done.
func (r *Renewer) Start(ctx context.Context) error {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	failing := false
	for {
		rctx, cancel := context.WithTimeout(ctx, r.cfg.Interval)
		err := r.Renew(rctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			failing = true
			r.cfg.Logger.Warn("cannot renew the agent's lease; berth-controller acts for this node's IP claims once it has been silent past its grace period",
				"lease", r.cfg.Namespace+"/"+Name(r.cfg.Node), "err", err, "retry_in_seconds", r.cfg.Interval.Seconds())
		case failing:
			failing = false
			r.cfg.Logger.Info("renewed the agent's lease again", "lease", r.cfg.Namespace+"/"+Name(r.cfg.Node))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Renew renews the lease once, creating it if it does not exist.
func (r *Renewer) Renew(ctx context.Context) error {
	leases := r.cfg.Leases.Leases(r.cfg.Namespace)
	name := Name(r.cfg.Node)
	now := metav1.NewMicroTime(r.cfg.Now())
	l, err := leases.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: r.cfg.Namespace,
				Labels: map[string]string{"app.kubernetes.io/name": "berth-agent", "app.kubernetes.io/part-of": "berth"}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(r.cfg.Node), AcquireTime: &now, RenewTime: &now,
				LeaseDurationSeconds: ptr.To(int32(4 * r.cfg.Interval / time.Second))},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("lease %s: create: %w", name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("lease %s: %w", name, err)
	}
	l.Spec.RenewTime = &now
	l.Spec.HolderIdentity = ptr.To(r.cfg.Node)
	if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("lease %s: renew: %w", name, err)
	}
	return nil
}
