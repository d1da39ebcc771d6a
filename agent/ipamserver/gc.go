package ipamserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/agent/crisandbox"
	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/internal/ipalloc"
)

// DefaultSweepInterval is how often the agent compares its node's claims
// with the runtime's sandboxes.
const DefaultSweepInterval = time.Minute

// Sources of a garbage collection, the label of its metrics.
const (
	gcSourceCNI   = "cni"   // CNI GC, sent by the runtime for one network
	gcSourceSweep = "sweep" // the agent's own sweep against the runtime's sandboxes
)

// SandboxLister lists the runtime's pod sandboxes (crisandbox.Lister).
type SandboxLister interface {
	List(ctx context.Context) ([]crisandbox.Sandbox, error)
}

// gc serves CNI GC: the claims of the request's network whose attachment
// is not in the runtime's list are released (see collect).
func (s *Server) gc(ctx context.Context, req *protocol.Request) *protocol.Response {
	valid := map[string]bool{}
	for _, a := range req.ValidAttachments {
		valid[a.ContainerID+"/"+a.IfName] = true
	}
	err := s.collect(ctx, gcSourceCNI, ipalloc.GCRequest{Network: req.Network,
		Valid: func(c *v1alpha1.IPClaim) bool { return valid[c.Spec.ContainerID+"/"+c.Spec.Interface] }})
	if err != nil {
		return errResponse(protocol.CodeInternal, "berth-ipam GC failed", err)
	}
	return &protocol.Response{}
}

// sweep releases the node's held claims whose pod has no sandbox in the
// runtime any more: its network is gone, whatever happened to its DEL
// (a force-deleted pod whose sandbox ended later, a node rebooted, a
// runtime that sends no CNI GC). A claim whose sandbox still exists is
// kept, even when its pod object is gone: its address may still answer
// on the network. A prepared claim (no container yet) is kept while its
// pod exists or any sandbox of the pod does.
func (s *Server) sweep(ctx context.Context) error {
	boxes, err := s.cfg.Sandboxes.List(ctx)
	if err != nil {
		s.metrics.gcRuns.WithLabelValues(gcSourceSweep, "error").Inc()
		return err
	}
	ids, uids := map[string]bool{}, map[types.UID]bool{}
	for _, b := range boxes {
		ids[b.ID], uids[b.PodUID] = true, true
	}
	err = s.collect(ctx, gcSourceSweep, ipalloc.GCRequest{AllNetworks: true, Valid: func(c *v1alpha1.IPClaim) bool {
		if c.Spec.ContainerID != "" {
			return ids[c.Spec.ContainerID]
		}
		return uids[c.Spec.Pod.UID] // its pod object is the allocator's to check
	}})
	if err == nil {
		s.pruneAttachments(ids)
	}
	return err
}

// pruneAttachments removes the attachment records of containers the
// runtime does not have (ids), written longer than GC's grace ago and not
// in use: their DEL never came, or ran before the ADD wrote the record
// (berth-ipam gave up on the ADD), or their claims moved to the pod's
// next sandbox. Without it such records stay in /run until the node
// reboots.
func (s *Server) pruneAttachments(ids map[string]bool) {
	files, err := filepath.Glob(filepath.Join(s.cfg.AttachmentDir, "*.json"))
	if err != nil {
		return
	}
	now := time.Now()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		a, err := decodeAttachment(data)
		if err != nil || a.ContainerID == "" || ids[a.ContainerID] {
			continue
		}
		s.mu.Lock()
		t, recent := s.recent[a.ContainerID]
		s.mu.Unlock()
		if recent && now.Sub(t) < gcGrace || s.releases.pending(a.ContainerID) || s.binds.pending(a.ContainerID) {
			continue
		}
		if fi, err := os.Stat(f); err != nil || now.Sub(fi.ModTime()) < gcGrace {
			continue
		}
		if err := os.Remove(f); err == nil {
			s.cfg.Logger.Info("removed the attachment record of a container the runtime no longer has", "container_id", a.ContainerID, "interface", a.IfName)
		}
	}
}

// collect runs one garbage collection: claims of ADDs in flight (or
// younger than gcGrace) and of releases pending are kept; each release,
// each claim kept because its pod reports the address, and a refusal are
// logged and counted; a refusal is also a Warning Event on the Node.
func (s *Server) collect(ctx context.Context, source string, req ipalloc.GCRequest) error {
	now := time.Now()
	req.Keep = func(id string) bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		t, ok := s.recent[id]
		return ok && now.Sub(t) < gcGrace || s.releases.pending(id)
	}
	req.MaxShare = s.cfg.GCMaxShare
	res, err := s.alloc.GC(ctx, req)
	log := s.cfg.Logger.With("source", source)
	for _, c := range res.Released {
		if c.Spec.ContainerID != "" {
			// As a DEL's release does: the container is gone, and so is its
			// network (nothing for early release, no grace at restart).
			_ = os.Remove(attachmentFile(s.cfg.AttachmentDir, c.Spec.ContainerID, c.Spec.Interface))
		}
		log.Info("GC released the claim of a container the runtime no longer has", "network", c.Spec.Network, "claim", c.Name, "address", c.Spec.Address,
			"container_id", c.Spec.ContainerID, "interface", c.Spec.Interface, "pod", c.Spec.Pod.Namespace+"/"+c.Spec.Pod.Name, "pod_uid", c.Spec.Pod.UID)
	}
	for _, c := range res.KeptLive {
		log.Info("GC kept a claim the runtime does not list: its pod still reports the address", "claim", c.Name, "address", c.Spec.Address,
			"container_id", c.Spec.ContainerID, "pod", c.Spec.Pod.Namespace+"/"+c.Spec.Pod.Name)
	}
	s.metrics.gc.WithLabelValues(source, "released").Add(float64(len(res.Released)))
	s.metrics.gc.WithLabelValues(source, "kept_live").Add(float64(len(res.KeptLive)))
	var refused *ipalloc.GCRefusedError
	switch {
	case err == nil:
		s.metrics.gcRuns.WithLabelValues(source, "ok").Inc()
	case errors.As(err, &refused):
		s.metrics.gc.WithLabelValues(source, "refused").Add(float64(refused.Would))
		s.metrics.gcRuns.WithLabelValues(source, "refused").Inc()
		s.refusedEvent("%s garbage collection of node %s's IP claims refused: %v. "+
			"If the pods are really gone, raise --ipam-gc-max-share or release the claims by hand (kubectl delete ipclaim)", source, s.cfg.Node, err)
	default:
		s.metrics.gcRuns.WithLabelValues(source, "error").Inc()
	}
	if err != nil {
		return fmt.Errorf("%s gc: %w", source, err)
	}
	return nil
}

// refusedEvent records a refused collection as a Warning Event on the
// agent's Node, if the server has a recorder.
func (s *Server) refusedEvent(note string, args ...any) {
	if s.cfg.Recorder != nil && s.cfg.Node != "" {
		s.cfg.Recorder.Eventf(s.nodeObject(), nil, corev1.EventTypeWarning, "IPClaimGCRefused", "GC", note, args...)
	}
}

// runSweeper sweeps every SweepInterval until ctx is done; a failed sweep
// is logged and tried again at the next tick.
func (s *Server) runSweeper(ctx context.Context) {
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		err := s.sweep(sctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			s.cfg.Logger.Warn("cannot sweep the node's IP claims against the runtime's sandboxes; trying again", "err", err,
				"retry_in_seconds", s.cfg.SweepInterval.Seconds())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
