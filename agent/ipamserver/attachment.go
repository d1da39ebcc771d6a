package ipamserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/berth-io/berth/cni/ipam/protocol"
	"github.com/berth-io/berth/internal/ipalloc"
)

// The attachment record of each ADD (a file per container and interface
// under AttachmentDir): its netns, for early release; its prepared
// claims, until the container is recorded on them after the answer
// (bindLater), also across an agent restart (readAttachments); and its
// time, CNI GC's grace across restarts.

// recordAttachment writes the ADD's attachment record (for early release)
// and records the container on prepared claims: after the answer when the
// record names them (bindLater), else now.
func (s *Server) recordAttachment(ctx context.Context, req *protocol.Request, als []ipalloc.Allocation) error {
	att := attachment{ContainerID: req.ContainerID, IfName: req.IfName, Netns: req.Netns, Network: req.Network}
	for _, a := range als {
		if a.Prepared {
			att.PodUID = a.PodUID
			att.Claims = append(att.Claims, a.Claim)
		}
	}
	var err error
	if req.Netns != "" {
		if err = writeAttachment(s.cfg.AttachmentDir, att); err != nil {
			s.cfg.Logger.Warn("cannot record the attachment; early release will not find it", "container_id", req.ContainerID, "err", err)
		}
	}
	if len(att.Claims) == 0 {
		return nil
	}
	s.metrics.prepared.WithLabelValues("used").Inc()
	if req.Netns != "" && err == nil {
		s.bindLater(req.PodNamespace+"/"+req.PodName, att) //nolint:contextcheck // outlives the request, bounded by Start's context
		return nil
	}
	for _, name := range att.Claims {
		if err := s.alloc.BindContainer(ctx, name, att.PodUID, req.ContainerID, req.Network); err != nil {
			return err
		}
	}
	return nil
}

// bindLater records the container of att (and its network) on att's
// prepared claims in the background, retrying with backoff while the API
// server fails, until the container's DEL cancels it or the server stops
// (then the next Start does it from the attachment record).
func (s *Server) bindLater(pod string, att attachment) {
	containerID := att.ContainerID
	e := &pendingEntry{container: containerID, pod: pod, uid: att.PodUID, claims: att.Claims}
	s.later(&s.binds, e, containerID, func() {
		start := time.Now()
		// A dual-stack pod's two claims are recorded at once.
		var wg sync.WaitGroup
		for _, name := range att.Claims {
			wg.Go(func() {
				s.keepTrying(e, "cannot record the container on its prepared claim; retrying", func(ctx context.Context) error {
					err := s.alloc.BindContainer(ctx, name, att.PodUID, containerID, att.Network)
					if errors.Is(err, ipalloc.ErrNotPrepared) && !e.canceled.Load() {
						s.staleAnswer(pod, att.PodUID, containerID, name, err)
						return nil
					}
					return err
				}, "claim", name, "container_id", containerID)
			})
		}
		wg.Wait()
		s.cfg.Logger.Debug("recorded the container on its prepared claims", "container_id", containerID, "claims", att.Claims,
			"duration_seconds", time.Since(start).Seconds())
	})
}

// staleAnswer reports a prepared answer that turned stale: the ADD answered
// with a prepared claim that was changed (reserved, freed or taken) before
// the container was recorded on it, so the pod may run on an address the
// API no longer gives it. A Warning Event on the pod, a metric and a log.
func (s *Server) staleAnswer(pod string, uid types.UID, containerID, claim string, err error) {
	s.metrics.prepared.WithLabelValues("stale").Inc()
	s.cfg.Logger.Warn("prepared claim changed before its container was recorded", "claim", claim, "container_id", containerID, "pod", pod, "err", err)
	if s.cfg.Recorder == nil {
		return
	}
	ns, name, _ := strings.Cut(pod, "/")
	s.cfg.Recorder.Eventf(podObject(ns, name, uid), nil, corev1.EventTypeWarning, "PreparedAddressStale", "BindContainer",
		"the address berth-ipam answered from claim %s was changed by someone else before the container was recorded on it (%v); "+
			"the pod may share it with another: delete the pod so that it gets a new one", claim, err)
}

// later runs work in the background, tracked in p under key, once one of
// p's workers is free; not at all if the server stops first.
func (s *Server) later(p *pendingWork, e *pendingEntry, key string, work func()) {
	done := p.start(e, key)
	go func() {
		defer done()
		defer s.parts.Recover(PartServer, s.cfg.Logger, nil)
		select {
		case p.sem <- struct{}{}:
			defer func() { <-p.sem }()
		case <-s.bg.Done():
			return
		}
		work()
	}()
}

// keepTrying runs write until it succeeds, e is canceled or the server
// stops, waiting 50ms after the first failure and doubling up to 5s; each
// failure is logged at warn with msg and attrs. It reports whether write
// succeeded.
func (s *Server) keepTrying(e *pendingEntry, msg string, write func(context.Context) error, attrs ...any) bool {
	backoff := wait.Backoff{Duration: 50 * time.Millisecond, Factor: 2, Cap: 5 * time.Second, Steps: 1 << 30}
	for !e.canceled.Load() {
		ctx, cancel := context.WithTimeout(s.bg, s.cfg.RequestTimeout)
		err := write(ctx)
		cancel()
		switch {
		case err == nil:
			return true
		case e.canceled.Load():
			return false // e.g. the DEL released the claim under this write
		}
		s.cfg.Logger.Warn(msg, append(attrs, "err", err)...)
		select {
		case <-s.bg.Done():
			return false
		case <-time.After(backoff.Step()):
		}
	}
	return false
}

// readAttachments reads the attachment records an earlier run of the
// agent left, before the socket is served. It records the containers of
// prepared claims that run answered ADD for but stopped before recording
// them. And it counts each container whose record is younger than gcGrace
// as a recent ADD, from the record's time, so that CNI GC keeps off it
// across the restart too (a runtime lists its sandboxes, an ADD ends, the
// agent restarts, then the runtime's GC arrives without the new sandbox).
func (s *Server) readAttachments(ctx context.Context) error {
	files, err := filepath.Glob(filepath.Join(s.cfg.AttachmentDir, "*.json"))
	if err != nil {
		return fmt.Errorf("attachment records: %w", err)
	}
	now := time.Now()
	for _, f := range files {
		fi, err := os.Stat(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("attachment record %s: %w", f, err)
		}
		data, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("attachment record %s: %w", f, err)
		}
		a, err := decodeAttachment(data)
		if err != nil {
			continue // unreadable: nothing to keep or record
		}
		if t := fi.ModTime(); a.ContainerID != "" && now.Sub(t) < gcGrace {
			s.mu.Lock()
			if t.After(s.recent[a.ContainerID]) {
				s.recent[a.ContainerID] = t
			}
			s.mu.Unlock()
		}
		if a.PodUID == "" {
			continue // not from a prepared ADD: nothing to record
		}
		for _, name := range a.Claims {
			err := s.alloc.BindContainer(ctx, name, a.PodUID, a.ContainerID, a.Network)
			if errors.Is(err, ipalloc.ErrNotPrepared) {
				continue // released or moved on since
			}
			if err != nil {
				return fmt.Errorf("attachment record %s: %w", f, err)
			}
		}
	}
	return nil
}

// DefaultAttachmentDir records, per container and interface, the netns an
// ADD was for, so early release can find the pod's interface.
const DefaultAttachmentDir = "/run/berth/ipam-attachments"

type attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Netns       string `json:"netns"`
	Network     string `json:"network,omitempty"` // the CNI network's name
	// PodUID and Claims are set when ADD answered with prepared claims:
	// they record the container on the claims after the answer.
	PodUID types.UID `json:"podUID,omitempty"`
	Claims []string  `json:"claims,omitempty"`
}

func decodeAttachment(data []byte) (attachment, error) {
	var a attachment
	err := json.Unmarshal(data, &a)
	return a, err
}

func attachmentFile(dir, containerID, ifName string) string {
	return filepath.Join(dir, protocol.FileName(containerID, ifName))
}

func writeAttachment(dir string, a attachment) error {
	data, err := json.Marshal(a)
	if err != nil {
		return err
	}
	return writeFileAtomic(attachmentFile(dir, a.ContainerID, a.IfName), data)
}

// writeFileAtomic writes data to f through a temporary file and a rename,
// making f's directory if missing.
func writeFileAtomic(f string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(f+".tmp", data, 0o600); err != nil {
		return err
	}
	return os.Rename(f+".tmp", f)
}

func readAttachment(dir, containerID, ifName string) (attachment, error) {
	data, err := os.ReadFile(attachmentFile(dir, containerID, ifName))
	if err != nil {
		return attachment{}, err
	}
	return decodeAttachment(data)
}
