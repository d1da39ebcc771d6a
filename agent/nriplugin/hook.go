package nriplugin

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/containerd/nri/pkg/api"
	"google.golang.org/protobuf/proto"
)

// Hook adjusts a container as it is created. A hook's decision is a pure
// function in hooks/<name>/: no I/O, no clock, no API server; the same pod
// and container give the same answer. The agent may wrap it with the host
// I/O its adjustment needs (agent/logdirs makes the directories the
// filelogs hook mounts); that stays well within NRI's 2 s per request.
//
// A hook may also implement SynchronizeHook, RunPodSandboxHook and
// RemovePodSandboxHook to follow the runtime's pods and containers.
type Hook interface {
	// Name names the hook in errors and logs, e.g. "filelogs".
	Name() string
	// CreateContainer returns the hook's adjustment for ctr, or nil when
	// the hook does not apply to it. An error fails the container's
	// creation and should say what the user has to fix. It must not modify
	// pod or ctr: later hooks see the same ones.
	CreateContainer(pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error)
}

// SynchronizeHook is told, at each connect to the runtime, which pods and
// containers it has: e.g. to find running containers that missed the hook
// because the agent was down when they were created. It must return
// quickly and must not modify its arguments.
type SynchronizeHook interface {
	Synchronize(ctx context.Context, pods []*api.PodSandbox, ctrs []*api.Container)
}

// RunPodSandboxHook is told that a pod sandbox started.
type RunPodSandboxHook interface {
	RunPodSandbox(ctx context.Context, pod *api.PodSandbox)
}

// RemovePodSandboxHook is told that a pod sandbox was removed.
type RemovePodSandboxHook interface {
	RemovePodSandbox(ctx context.Context, pod *api.PodSandbox)
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

// notifyHooks calls call for each hook that implements I. A panic is
// logged, not spread: the notification is lost, the agent goes on.
func notifyHooks[I any](log *slog.Logger, event string, hooks []Hook, call func(I)) {
	for _, h := range hooks {
		i, ok := h.(I)
		if !ok {
			continue
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					log.Error("hook panicked", "hook", h.Name(), "event", event, "panic", fmt.Sprint(r))
				}
			}()
			call(i)
		}()
	}
}
