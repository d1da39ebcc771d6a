package ipamserver

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
)

// pendingWork tracks the writes to a container's claims that the agent
// makes after it answered the runtime: recording the container on its
// prepared claims after the ADD (bindLater), releasing the claims after the
// DEL (releaseLater). Requests about the same container or pod wait for
// them (wait).
type pendingWork struct {
	mu sync.Mutex
	m  map[string]*pendingEntry // key ->
	wg sync.WaitGroup
	// sem bounds the writes in flight: under a burst they queue here,
	// where a DEL cancels a recording before any write.
	sem chan struct{}
	// gauge, when set, follows len(m).
	gauge prometheus.Gauge
	// waiting says what wait waited for, in its error.
	waiting string
}

// How many containers are written at once: the container records of
// prepared claims, each right after its ADD answered (a dual-stack pod's
// two claims in parallel), and the releases of answered DELs, which
// after a burst of DELs drain faster with more in flight (docs/benchmarks.md:
// 0.60x host-local's DEL/s with 16, 0.53x with 4, at the median).
const (
	bindWorkers    = 4
	releaseWorkers = 16
)

func newPendingWork(workers int, gauge prometheus.Gauge, waiting string) pendingWork {
	return pendingWork{sem: make(chan struct{}, workers), gauge: gauge, waiting: waiting}
}

type pendingEntry struct {
	container string
	pod       string // namespace/name
	uid       types.UID
	claims    []string
	done      chan struct{} // closed when written (or given up)
	// canceled by the container's DEL: write no more. A write in flight
	// then and the DEL's release are ordered by the claim's
	// resourceVersion: whichever lands second conflicts and looks again.
	canceled atomic.Bool
}

// changed updates the gauge; p.mu is held.
func (p *pendingWork) changed() {
	if p.gauge != nil {
		p.gauge.Set(float64(len(p.m)))
	}
}

// start tracks e under key until done is called.
func (p *pendingWork) start(e *pendingEntry, key string) (done func()) {
	e.done = make(chan struct{})
	p.mu.Lock()
	if p.m == nil {
		p.m = map[string]*pendingEntry{}
	}
	p.m[key] = e
	p.changed()
	p.mu.Unlock()
	p.wg.Add(1)
	return func() {
		p.mu.Lock()
		if p.m[key] == e {
			delete(p.m, key)
			p.changed()
		}
		p.mu.Unlock()
		close(e.done)
		p.wg.Done()
	}
}

// cancel stops the work under key and returns what was pending, nil if
// nothing.
func (p *pendingWork) cancel(key string) *pendingEntry {
	p.mu.Lock()
	e := p.m[key]
	delete(p.m, key)
	p.changed()
	p.mu.Unlock()
	if e != nil {
		e.canceled.Store(true)
	}
	return e
}

// dones returns the done channels of the work pending now that match
// accepts.
func (p *pendingWork) dones(match func(*pendingEntry) bool) []chan struct{} {
	var chs []chan struct{}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.m {
		if match(e) {
			chs = append(chs, e.done)
		}
	}
	return chs
}

// waitDone waits for every channel of chs to close, or for ctx to end.
func waitDone(ctx context.Context, chs []chan struct{}) error {
	for _, ch := range chs {
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// pending reports whether work on the container's claims is pending.
func (p *pendingWork) pending(containerID string) bool {
	return len(p.dones(func(e *pendingEntry) bool { return e.container == containerID })) > 0
}

// waitAll waits at most limit (and not beyond ctx) for the work pending
// now, and reports whether there was some and it all ended.
func (p *pendingWork) waitAll(ctx context.Context, limit time.Duration) bool {
	chs := p.dones(func(*pendingEntry) bool { return true })
	if len(chs) == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	return waitDone(ctx, chs) == nil
}

// wait returns once the work on the claims of the container, of the pod
// (by namespace/name) or of the pod uid is done (at once when nothing is
// pending; empty arguments match nothing), or with ctx's error.
func (p *pendingWork) wait(ctx context.Context, pod string, uid types.UID, containerID string) error {
	chs := p.dones(func(e *pendingEntry) bool {
		return (containerID != "" && e.container == containerID) || (pod != "" && e.pod == pod) || (uid != "" && e.uid == uid)
	})
	if err := waitDone(ctx, chs); err != nil {
		return fmt.Errorf("%s: %w", p.waiting, err)
	}
	return nil
}
