package ipamserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/ipalloc"
	"github.com/berth-io/berth/internal/parts"
)

// Unplug removes addr from ifName in the network namespace at nsPath,
// through a netlink handle in that namespace (the agent never switches
// namespaces). A namespace or link already gone is not an error.
func Unplug(nsPath, ifName string, addr netip.Addr) error {
	h, err := netns.GetFromPath(nsPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("netns %s: %w", nsPath, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", nsPath, err)
	}
	defer nl.Close()
	link, err := nl.LinkByName(ifName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("link %s in %s: %w", ifName, nsPath, err)
	}
	addrs, err := nl.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("addresses of %s in %s: %w", ifName, nsPath, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr.Unmap() {
			if err := nl.AddrDel(link, &a); err != nil {
				return fmt.Errorf("remove %s from %s in %s: %w", addr, ifName, nsPath, err)
			}
		}
	}
	return nil
}

// podRef names a pod for the early releaser's queue and its Events.
type podRef struct {
	UID             types.UID
	Namespace, Name string
}

// Reasons of the Events early release records on the pod.
const (
	ReasonReleasedEarly      = "AddressReleasedEarly"
	ReasonEarlyReleaseFailed = "EarlyReleaseFailed"
)

// earlyReleaser releases the addresses of terminating pods on this node
// that ask for it (berth.io/ip-release: early).
type earlyReleaser struct {
	alloc  *ipalloc.Allocator
	node   string
	dir    string
	log    *slog.Logger
	unplug func(nsPath, ifName string, addr netip.Addr) error
	queue  workqueue.TypedRateLimitingInterface[podRef]
	// event, if set, records an Event on the pod.
	event func(pod podRef, eventType, reason, note string)
	// waitBinds, if set, waits until the pod's prepared claims record
	// their container (ReleaseEarly skips claims that record none).
	waitBinds func(context.Context, types.UID) error
	// parts counts a panic recovered in work (nil: not counted).
	parts *parts.Metrics
}

// wantsEarly reports whether pod is terminating on node and asked for
// early release.
func wantsEarly(pod *corev1.Pod, node string) bool {
	if pod.Spec.NodeName != node || pod.DeletionTimestamp == nil {
		return false
	}
	v, ok := pod.Annotations[v1alpha1.AnnotationRelease]
	if !ok {
		return false
	}
	early, _ := ipalloc.ParseRelease(v) // another value: the server records an Event (annotations.go)
	return early
}

// process releases one pod's claims early and returns the addresses it
// removed from the pod's interfaces ("10.0.0.5 from eth0").
func (r *earlyReleaser) process(ctx context.Context, uid types.UID) ([]string, error) {
	if r.waitBinds != nil {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := r.waitBinds(wctx, uid)
		cancel()
		if err != nil {
			return nil, err // retried with backoff
		}
	}
	var removed []string
	err := r.alloc.ReleaseEarly(ctx, uid, func(c *v1alpha1.IPClaim) error {
		att, err := readAttachment(r.dir, c.Spec.ContainerID, c.Spec.Interface)
		if errors.Is(err, os.ErrNotExist) {
			// Not attached by this agent (or DEL already ran): nothing of
			// ours to remove it from; keep it Releasing until DEL.
			return fmt.Errorf("no record of the attachment of container %s", c.Spec.ContainerID)
		}
		if err != nil {
			return err
		}
		addr, err := netip.ParseAddr(c.Spec.Address)
		if err != nil {
			return err
		}
		if err := r.unplug(att.Netns, att.IfName, addr); err != nil {
			return err
		}
		removed = append(removed, fmt.Sprintf("%s from %s", addr, att.IfName))
		return nil
	})
	return removed, err
}

// run watches pods through informer and works the queue until ctx is done.
func (r *earlyReleaser) run(ctx context.Context, c cache.Cache) error {
	inf, err := c.GetInformer(ctx, &corev1.Pod{})
	if err != nil {
		return err
	}
	on := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok && wantsEarly(p, r.node) {
			r.queue.Add(podRef{UID: p.UID, Namespace: p.Namespace, Name: p.Name})
		}
	}
	reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: on, UpdateFunc: func(_, n any) { on(n) },
	})
	if err != nil {
		return err
	}
	defer func() { _ = inf.RemoveEventHandler(reg) }() // a run after a panic adds its own
	go func() { <-ctx.Done(); r.queue.ShutDown() }()
	for {
		pod, quit := r.queue.Get()
		if quit {
			return nil
		}
		if err := r.workRecovering(ctx, pod); err != nil {
			r.queue.AddRateLimited(pod)
		}
		r.queue.Done(pod)
	}
}

// workRecovering is work, with a panic recovered, counted and returned.
func (r *earlyReleaser) workRecovering(ctx context.Context, pod podRef) (err error) {
	defer r.parts.Recover(PartEarlyRelease, r.log, &err)
	r.work(ctx, pod)
	return nil
}

// work processes one pod from the queue: it logs and records an Event of
// what it did, and queues the pod again after a failure.
func (r *earlyReleaser) work(ctx context.Context, pod podRef) {
	start := time.Now()
	removed, err := r.process(ctx, pod.UID)
	if err != nil {
		r.log.Warn("early release failed; retrying", "namespace", pod.Namespace, "pod", pod.Name, "pod_uid", pod.UID, "err", err)
		r.record(pod, corev1.EventTypeWarning, ReasonEarlyReleaseFailed,
			fmt.Sprintf("berth.io/ip-release: early: %v; retrying (the address is released at the pod's CNI DEL at the latest)", err))
		r.queue.AddRateLimited(pod)
		return
	}
	r.queue.Forget(pod)
	if len(removed) == 0 {
		return // nothing left to release: done before, or by DEL
	}
	r.log.Info("released early", "namespace", pod.Namespace, "pod", pod.Name, "pod_uid", pod.UID, "removed", removed,
		"duration_seconds", time.Since(start).Seconds())
	it := "it"
	if len(removed) > 1 {
		it = "them"
	}
	r.record(pod, corev1.EventTypeNormal, ReasonReleasedEarly,
		fmt.Sprintf("berth.io/ip-release: early: removed %s and released %s for the app's next pod; the pod has no network for the rest of its termination",
			strings.Join(removed, ", "), it))
}

func (r *earlyReleaser) record(pod podRef, eventType, reason, note string) {
	if r.event != nil {
		r.event(pod, eventType, reason, note)
	}
}
