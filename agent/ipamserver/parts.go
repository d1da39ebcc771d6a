package ipamserver

import (
	"context"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"

	"github.com/berth-io/berth/internal/parts"
)

// Names of the server's parts.
const (
	// PartServer is the server itself (its background writes after an
	// answer count their panics under it).
	PartServer       = "ipam-server"
	PartEarlyRelease = "ipam-early-release"
	PartPreparer     = "ipam-preparer"
	PartSweep        = "ipam-sweep"
)

// Parts returns the server's background parts that its Config turns on
// (early release, the preparer, the sweep), each a runnable of its own to
// add to the manager beside the server, with its own readyz check. Each
// starts once the server serves its socket; one that panics is recovered,
// reported and started again (internal/parts).
func (s *Server) Parts() ([]*parts.Part, error) {
	var runs []parts.Config
	if s.cfg.EarlyRelease {
		runs = append(runs, parts.Config{Name: PartEarlyRelease, Run: s.runEarlyRelease})
	}
	if s.cfg.Prepare {
		runs = append(runs, parts.Config{Name: PartPreparer, Run: s.runPreparer})
	}
	if s.cfg.Sandboxes != nil {
		runs = append(runs, parts.Config{Name: PartSweep, Run: func(ctx context.Context) error { s.runSweeper(ctx); return nil }})
	}
	var out []*parts.Part
	for _, cfg := range runs {
		run := cfg.Run
		cfg.Run = func(ctx context.Context) error {
			select {
			case <-ctx.Done():
				return nil
			case <-s.serving:
			}
			return run(ctx)
		}
		cfg.Metrics, cfg.Logger = s.parts, s.cfg.Logger
		p, err := parts.New(cfg)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// runEarlyRelease runs early release (early.go) until ctx is done.
func (s *Server) runEarlyRelease(ctx context.Context) error {
	r := &earlyReleaser{alloc: s.alloc, node: s.cfg.Node, dir: s.cfg.AttachmentDir, log: s.cfg.Logger, unplug: Unplug,
		waitBinds: func(ctx context.Context, uid types.UID) error { return s.waitPending(ctx, "", uid, "") },
		queue:     workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[podRef]()),
		parts:     s.parts}
	if rec := s.cfg.Recorder; rec != nil {
		r.event = func(p podRef, eventType, reason, note string) {
			rec.Eventf(podObject(p.Namespace, p.Name, p.UID), nil, eventType, reason, "EarlyRelease", "%s", note)
		}
	}
	return r.run(ctx, s.cfg.PodCache)
}
