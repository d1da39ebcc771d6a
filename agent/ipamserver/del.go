package ipamserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/cni/ipam/protocol"
)

// Deferred release (Config.DeferRelease): a DEL answers once its request is
// recorded in QueueDir, the same record berth-ipam writes when the agent
// is down, and the agent commits the release right after, in the
// background (releaseLater), retrying while the API server fails. Until
// then the claims stay as they are: an address is held a few
// milliseconds longer, never given out early. An ADD, CHECK or
// preparation of the container or its pod, and early release of the pod,
// wait for the release; CNI GC leaves its claims alone. A record the
// agent did not get to (it stopped, or the API server stayed
// unreachable) runs when the agent starts again, before it serves the
// socket (drainQueue). A release the API server rejects for good
// (rejectedForGood) is tried QuarantineAfter times; then its record moves
// to quarantine (quarantine.go) and the claims stay held.

// release is a DEL's work: the prepared claims whose recording bound had
// pending (canceled by the DEL), and the container's claims on its
// interface (all with none); then its attachment record goes.
func (s *Server) release(ctx context.Context, req *protocol.Request, bound *pendingEntry) error {
	var errs []error
	if bound != nil {
		for _, name := range bound.claims {
			if err := s.alloc.ReleasePrepared(ctx, name, bound.uid); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := s.alloc.Release(ctx, req.ContainerID, req.IfName); err != nil {
		return err
	}
	if req.IfName != "" {
		_ = os.Remove(attachmentFile(s.cfg.AttachmentDir, req.ContainerID, req.IfName))
	}
	return nil
}

// releaseLater releases, in the background, the claims of a DEL that was
// answered at start, and then removes its record from QueueDir.
func (s *Server) releaseLater(req *protocol.Request, bound *pendingEntry, start time.Time) {
	e := &pendingEntry{container: req.ContainerID}
	if bound != nil {
		e.pod, e.uid = bound.pod, bound.uid
	}
	if claims, err := s.cfg.Store.ClaimsOfContainer(req.ContainerID); err == nil && len(claims) > 0 {
		// So that the pod's next ADD waits for it, whichever container.
		p := claims[0].Spec.Pod
		e.pod, e.uid = p.Namespace+"/"+p.Name, p.UID
	}
	s.later(&s.releases, e, req.ContainerID+"/"+req.IfName, func() {
		var rejected int
		quarantined := false
		ok := s.keepTrying(e, "cannot release the claims of an answered DEL; retrying", func(ctx context.Context) error {
			err := s.release(ctx, req, bound)
			s.observeRelease(start, err)
			if err == nil || !rejectedForGood(err) {
				return err
			}
			if rejected++; rejected < s.cfg.QuarantineAfter {
				return err
			}
			// Rejected for good: stop retrying, keep the record (and the
			// claims held) for the operator.
			if qerr := s.quarantine(protocol.QueueFile(s.cfg.QueueDir, req), req, err, rejected); qerr != nil {
				return fmt.Errorf("%w; %w", err, qerr)
			}
			quarantined = true
			return nil
		}, "container_id", req.ContainerID, "interface", req.IfName)
		if !ok || quarantined {
			return // the server stops (the next Start runs the record), or the record is in quarantine
		}
		if err := os.Remove(protocol.QueueFile(s.cfg.QueueDir, req)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.cfg.Logger.Warn("cannot remove a DEL's record; the next start runs it again, which is harmless", "container_id", req.ContainerID, "err", err)
		}
		s.cfg.Logger.Debug("released the claims of an answered DEL", "container_id", req.ContainerID, "interface", req.IfName,
			"duration_seconds", time.Since(start).Seconds())
	})
}

// observeRelease counts a release that began with a DEL at start.
func (s *Server) observeRelease(start time.Time, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	s.metrics.release.WithLabelValues(result).Observe(time.Since(start).Seconds())
}

func (s *Server) del(ctx context.Context, req *protocol.Request) *protocol.Response {
	start := time.Now()
	if req.ContainerID == "" {
		return errResponse(protocol.CodeInvalidConfig, "berth-ipam DEL needs the container ID", nil)
	}
	// The prepared claims still waiting to record the container are
	// released without that update: one write instead of two.
	var bound *pendingEntry
	if req.IfName == "" || req.IfName == PrepareInterface {
		bound = s.binds.cancel(req.ContainerID)
	}
	if s.cfg.DeferRelease {
		err := protocol.Enqueue(s.cfg.QueueDir, req)
		if err == nil {
			s.releaseLater(req, bound, start) //nolint:contextcheck // outlives the request, bounded by Start's context
			return &protocol.Response{}
		}
		s.cfg.Logger.Warn("cannot record the DEL in the queue directory; releasing before answering", "container_id", req.ContainerID,
			"interface", req.IfName, "err", err)
	}
	err := s.release(ctx, req, bound)
	s.observeRelease(start, err)
	if err != nil {
		s.cfg.Logger.Warn("DEL failed", "container_id", req.ContainerID, "interface", req.IfName, "err", err)
		return errResponse(protocol.CodeInternal, "berth-ipam DEL failed", err)
	}
	return &protocol.Response{}
}

// waitPending waits for the writes the agent makes after answering (see
// pendingWork.wait) to the claims of the container, the pod or the uid.
func (s *Server) waitPending(ctx context.Context, pod string, uid types.UID, containerID string) error {
	if err := s.binds.wait(ctx, pod, uid, containerID); err != nil {
		return err
	}
	return s.releases.wait(ctx, pod, uid, containerID)
}

// drainQueue runs the DELs berth-ipam queued while the agent was down, and
// those the agent answered but did not release before it stopped. A DEL
// that fails stays queued: the addresses it holds must not look free. A
// failure that trying again may fix (the API server unreachable, a
// timeout, a conflict) ends the drain, and Start retries it before
// serving. A DEL the API server rejects for good does not stop the others;
// the drain then fails too (Start retries it), until the record has been
// rejected QuarantineAfter times and moves to quarantine. A record that
// cannot be read as a DEL moves there at once.
func (s *Server) drainQueue(ctx context.Context) error {
	s.countQuarantined()
	files, err := filepath.Glob(filepath.Join(s.cfg.QueueDir, "*.json"))
	if err != nil {
		return fmt.Errorf("ipam server: queued DELs: %w", err)
	}
	var rejected []error
	for _, f := range files {
		data, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		var req protocol.Request
		if err == nil {
			if err = protocol.Decode(data, &req); err == nil && req.ContainerID == "" {
				err = errors.New("no container ID")
			}
		}
		if err != nil {
			s.quarantineMalformed(f, err)
			continue
		}
		if rerr := s.release(ctx, &req, nil); rerr != nil {
			err := fmt.Errorf("ipam server: queued DEL of container %s: %w", req.ContainerID, rerr)
			if !rejectedForGood(rerr) {
				return err
			}
			if !s.rejectedOnce(f) {
				rejected = append(rejected, err)
				continue
			}
			if qerr := s.quarantine(f, &req, rerr, s.cfg.QuarantineAfter); qerr != nil {
				return fmt.Errorf("%w; %w", err, qerr)
			}
			continue
		}
		s.forgetRejections(f)
		if err := os.Remove(f); err != nil {
			return fmt.Errorf("ipam server: queued DEL %s: %w", f, err)
		}
		s.cfg.Logger.Info("ran a queued DEL (the agent was down, or stopped before it released the claims)", "container_id", req.ContainerID, "interface", req.IfName)
	}
	return errors.Join(rejected...)
}
