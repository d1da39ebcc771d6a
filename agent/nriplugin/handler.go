package nriplugin

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"
)

// Event names, as logged (event=...) and as the event label of
// berth_agent_nri_events_total.
const (
	EventSynchronize      = "Synchronize"
	EventRunPodSandbox    = "RunPodSandbox"
	EventStopPodSandbox   = "StopPodSandbox"
	EventRemovePodSandbox = "RemovePodSandbox"
	EventCreateContainer  = "CreateContainer"
	EventStartContainer   = "StartContainer"
	EventStopContainer    = "StopContainer"
	EventRemoveContainer  = "RemoveContainer"
)

// handler serves one connection to the runtime; the stub finds its methods
// through its one-method interfaces and subscribes to exactly those events.
// Each method is cheap: NRI gives a request 2 s (api.DefaultPluginRequestTimeout).
type handler struct {
	p *Plugin
	// Set by Configure, which the stub completes before Start returns.
	runtime, runtimeVersion string
	// dialed is when the connection was made; synced is closed by the
	// connection's Synchronize.
	dialed   time.Time
	synced   chan struct{}
	syncOnce sync.Once
}

// Configure records the runtime's name and version. A zero mask subscribes
// to every event handler implements.
func (h *handler) Configure(_ context.Context, _, runtime, version string) (api.EventMask, error) {
	h.runtime, h.runtimeVersion = runtime, version
	return 0, nil
}

// Synchronize receives the pods and containers that exist when the plugin
// connects. Berth asks for no updates.
func (h *handler) Synchronize(ctx context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	h.p.metrics.events.WithLabelValues(EventSynchronize).Inc()
	h.p.metrics.synchronized.Set(1)
	h.syncOnce.Do(func() { close(h.synced) })
	h.p.log.Info("synchronized with runtime", "pods", len(pods), "containers", len(ctrs),
		"waited_seconds", time.Since(h.dialed).Seconds())
	if h.p.log.Enabled(ctx, slog.LevelDebug) {
		byID := make(map[string]*api.PodSandbox, len(pods))
		for _, pod := range pods {
			byID[pod.GetId()] = pod
		}
		for _, ctr := range ctrs {
			h.p.log.Debug("container event", containerAttrs(EventSynchronize, byID[ctr.GetPodSandboxId()], ctr)...)
		}
	}
	notifyHooks(h.p.log, EventSynchronize, h.p.cfg.Hooks, func(hk SynchronizeHook) { hk.Synchronize(ctx, pods, ctrs) })
	return nil, nil
}

// RunPodSandbox is told that a pod sandbox started.
func (h *handler) RunPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	h.podEvent(EventRunPodSandbox, pod)
	notifyHooks(h.p.log, EventRunPodSandbox, h.p.cfg.Hooks, func(hk RunPodSandboxHook) { hk.RunPodSandbox(ctx, pod) })
	return nil
}

// StopPodSandbox is told that a pod sandbox is stopping.
func (h *handler) StopPodSandbox(_ context.Context, pod *api.PodSandbox) error {
	h.podEvent(EventStopPodSandbox, pod)
	return nil
}

// RemovePodSandbox is told that a pod sandbox was removed.
func (h *handler) RemovePodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	h.podEvent(EventRemovePodSandbox, pod)
	notifyHooks(h.p.log, EventRemovePodSandbox, h.p.cfg.Hooks, func(hk RemovePodSandboxHook) { hk.RemovePodSandbox(ctx, pod) })
	return nil
}

// CreateContainer runs the hooks and returns their merged adjustment. A
// hook's error fails the container's creation with that error.
func (h *handler) CreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	h.containerEvent(EventCreateContainer, pod, ctr)
	adj, err := runHooks(h.p.cfg.Hooks, pod, ctr)
	if err != nil {
		return nil, nil, err
	}
	return adj, nil, nil
}

// StartContainer is told that a container started.
func (h *handler) StartContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	h.containerEvent(EventStartContainer, pod, ctr)
	return nil
}

// StopContainer is told that a container is stopping. Berth asks for no
// updates.
func (h *handler) StopContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	h.containerEvent(EventStopContainer, pod, ctr)
	return nil, nil
}

// RemoveContainer is told that a container was removed.
func (h *handler) RemoveContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	h.containerEvent(EventRemoveContainer, pod, ctr)
	return nil
}

func (h *handler) podEvent(event string, pod *api.PodSandbox) {
	h.p.metrics.events.WithLabelValues(event).Inc()
	h.p.log.Info("pod event", "event", event, "namespace", pod.GetNamespace(), "pod", pod.GetName(),
		"id", shortID(pod.GetId()))
}

func (h *handler) containerEvent(event string, pod *api.PodSandbox, ctr *api.Container) {
	h.p.metrics.events.WithLabelValues(event).Inc()
	h.p.log.Info("container event", containerAttrs(event, pod, ctr)...)
}

func containerAttrs(event string, pod *api.PodSandbox, ctr *api.Container) []any {
	return []any{"event", event, "namespace", pod.GetNamespace(), "pod", pod.GetName(),
		"container", ctr.GetName(), "id", shortID(ctr.GetId())}
}

// shortID shortens a runtime ID to the 12 characters crictl shows.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
