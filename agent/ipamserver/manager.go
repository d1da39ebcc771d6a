package ipamserver

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/berth-io/berth/api/v1alpha1"
)

// NewForManager returns a Server whose Store reads mgr's cache (indexing
// IPClaims first) and writes through mgr's client; cfg.Store, PodCache
// and WaitForSync are set here. The manager's scheme must know berth.io types.
// Add the Server to mgr.
func NewForManager(ctx context.Context, mgr manager.Manager, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := IndexClaims(ctx, mgr.GetFieldIndexer()); err != nil {
		return nil, err
	}
	st := NewStore(mgr.GetCache(), mgr.GetAPIReader(), mgr.GetClient())
	cfg.Store, cfg.PodCache = st, mgr.GetCache()
	cfg.WaitForSync = func(ctx context.Context) bool {
		// Start the informers now rather than on the first ADD. Right after
		// `kubectl apply` the CRDs may not be served yet: retry, do not
		// fail (the agent's other parts run meanwhile; readyz says why).
		for _, obj := range []client.Object{&v1alpha1.IPClaim{}, &v1alpha1.IPPool{}, &corev1.Pod{}, &corev1.Namespace{}, &appsv1.ReplicaSet{}} {
			for {
				_, err := mgr.GetCache().GetInformer(ctx, obj)
				if err == nil {
					break
				}
				cfg.Logger.Warn("ipam server: waiting for an informer", "type", fmt.Sprintf("%T", obj), "err", err)
				select {
				case <-ctx.Done():
					return false
				case <-time.After(2 * time.Second):
				}
			}
		}
		return mgr.GetCache().WaitForCacheSync(ctx)
	}
	return New(cfg)
}
