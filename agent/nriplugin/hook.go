package nriplugin

import (
	"fmt"

	"github.com/containerd/nri/pkg/api"
	"google.golang.org/protobuf/proto"
)

// Hook adjusts a container as it is created. Hooks live in hooks/<name>/
// and are pure: no I/O, no clock, no API server; the same pod and container
// give the same answer.
type Hook interface {
	// Name names the hook in errors and logs, e.g. "filelogs".
	Name() string
	// CreateContainer returns the hook's adjustment for ctr, or nil when
	// the hook does not apply to it. An error fails the container's
	// creation and should say what the user has to fix. It must not modify
	// pod or ctr: later hooks see the same ones.
	CreateContainer(pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error)
}

// runHooks runs hooks in order and merges their adjustments (repeated
// fields such as mounts and env are appended, maps and messages merged, a
// later scalar wins). The first error stops the run. A panicking hook is
// turned into an error: bad input must never crash the agent.
func runHooks(hooks []Hook, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error) {
	var merged *api.ContainerAdjustment
	for _, h := range hooks {
		adj, err := runHook(h, pod, ctr)
		if err != nil {
			return nil, fmt.Errorf("hook %s: %w", h.Name(), err)
		}
		if adj == nil {
			continue
		}
		if merged == nil {
			merged = &api.ContainerAdjustment{}
		}
		proto.Merge(merged, adj)
	}
	return merged, nil
}

func runHook(h Hook, pod *api.PodSandbox, ctr *api.Container) (adj *api.ContainerAdjustment, err error) {
	defer func() {
		if r := recover(); r != nil {
			adj, err = nil, fmt.Errorf("panic: %v", r)
		}
	}()
	return h.CreateContainer(pod, ctr)
}
