package ipamserver

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/cni/ipam/protocol"
)

// Quarantine: a DEL record whose release the API server rejects for good
// (RBAC forbids the write, the claim fails validation, an admission
// webhook or policy denies it) would otherwise be retried forever and,
// queued while the agent was down, keep the socket closed: one bad
// record would stop IPAM on the node. After Config.QuarantineAfter such
// rejections the record moves to QuarantineDir (beside the queue, never
// deleted) and the agent records a Warning Event (on the pod if it still
// exists, else on the Node) and sets berth_agent_ipam_del_records_quarantined.
// The record's claims stay as they are: held, never freed silently. The
// operator fixes what refuses the write and moves the record back into
// the queue directory (the agent's next start runs it), or deletes the
// claims by hand.

// QuarantineDir is the directory, inside the queue directory, where
// rejected DEL records go.
const QuarantineDir = "quarantine"

// DefaultQuarantineAfter is how many times the API server must reject a
// DEL's release for good before its record is quarantined: about 15 s of
// the queue drain's backoff (1s, 2s, 4s, 8s) at the agent's start, under
// a second of deferred release's (50 ms doubling).
const DefaultQuarantineAfter = 5

// ReasonReleaseQuarantined is the reason of the Event recorded when a DEL
// record is quarantined.
const ReasonReleaseQuarantined = "IPReleaseQuarantined"

// maxEventNote bounds an Event's note (events.k8s.io/v1 holds at most
// 1 KB); the API server's error, last, is what gets cut.
const maxEventNote = 1024

// rejectedForGood reports whether the API server refused err's write for
// a reason that trying again does not change: 403 Forbidden (RBAC, an
// admission webhook's or ValidatingAdmissionPolicy's denial), 422 Invalid
// (validation, a policy's denial with that reason), 400 Bad Request (a
// webhook's denial without a code), 405, 406, 413, 415. Network errors, timeouts, throttling, 5xx
// (a webhook that cannot be reached), conflicts and anything that is not
// an API status are not. A joined error is rejected for good only if each
// of its errors is.
func rejectedForGood(err error) bool {
	switch e := err.(type) { //nolint:errorlint // walks the error tree itself: a joined error needs every branch
	case nil:
		return false
	case apierrors.APIStatus:
		st := e.Status()
		switch st.Reason {
		case metav1.StatusReasonForbidden, metav1.StatusReasonInvalid, metav1.StatusReasonBadRequest,
			metav1.StatusReasonMethodNotAllowed, metav1.StatusReasonNotAcceptable,
			metav1.StatusReasonRequestEntityTooLarge, metav1.StatusReasonUnsupportedMediaType:
			return true
		case metav1.StatusReasonUnknown:
			switch st.Code {
			case http.StatusBadRequest, http.StatusForbidden, http.StatusMethodNotAllowed, http.StatusNotAcceptable,
				http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusUnprocessableEntity:
				return true
			}
		}
		return false
	case interface{ Unwrap() []error }:
		errs := e.Unwrap()
		for _, x := range errs {
			if !rejectedForGood(x) {
				return false
			}
		}
		return len(errs) > 0
	case interface{ Unwrap() error }:
		return rejectedForGood(e.Unwrap())
	}
	return false
}

// rejections counts, per queue record, the tries the API server
// rejected for good.
type rejections struct {
	m map[string]int
}

// rejectedOnce counts one rejection of the record at f and reports
// whether it is time to quarantine it.
func (s *Server) rejectedOnce(f string) bool {
	s.rejectMu.Lock()
	defer s.rejectMu.Unlock()
	if s.rejected.m == nil {
		s.rejected.m = map[string]int{}
	}
	s.rejected.m[f]++
	if s.rejected.m[f] < s.cfg.QuarantineAfter {
		return false
	}
	delete(s.rejected.m, f)
	return true
}

// forgetRejections forgets the rejections of the record at f (it ran).
func (s *Server) forgetRejections(f string) {
	s.rejectMu.Lock()
	defer s.rejectMu.Unlock()
	delete(s.rejected.m, f)
}

func (s *Server) quarantineDir() string { return filepath.Join(s.cfg.QueueDir, QuarantineDir) }

// countQuarantined sets the gauge to the records in quarantine now.
func (s *Server) countQuarantined() {
	files, _ := filepath.Glob(filepath.Join(s.quarantineDir(), "*.json"))
	s.metrics.quarantined.Set(float64(len(files)))
}

// errQuarantinedAlready: the record was moved into quarantine by another
// release of the same DEL (a runtime repeats DEL).
var errQuarantinedAlready = errors.New("quarantined already")

// moveToQuarantine moves the record at f into the quarantine directory
// and returns its new path.
func (s *Server) moveToQuarantine(f string) (string, error) {
	dir := s.quarantineDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("quarantine %s: %w", f, err)
	}
	to := filepath.Join(dir, filepath.Base(f))
	if err := os.Rename(f, to); err != nil {
		if _, serr := os.Lstat(to); errors.Is(err, os.ErrNotExist) && serr == nil {
			return to, errQuarantinedAlready
		}
		return "", fmt.Errorf("quarantine %s: %w", f, err)
	}
	s.countQuarantined()
	return to, nil
}

// quarantine moves the DEL record at f, whose release the API server
// rejected for good tries times (the last with cause), into quarantine,
// and says so in the log and an Event (on the pod if its claims or the
// record name one that still exists, else on the Node). Its claims stay
// held.
func (s *Server) quarantine(f string, req *protocol.Request, cause error, tries int) error {
	to, err := s.moveToQuarantine(f)
	if errors.Is(err, errQuarantinedAlready) {
		return nil // and said so
	}
	if err != nil {
		return err
	}
	var names []string
	pod := types.NamespacedName{Namespace: req.PodNamespace, Name: req.PodName}
	uid := types.UID(req.PodUID)
	if claims, err := s.cfg.Store.ClaimsOfContainer(req.ContainerID); err == nil {
		for _, c := range claims {
			if req.IfName != "" && c.Spec.Interface != req.IfName {
				continue
			}
			names = append(names, c.Name)
			if c.Spec.Pod.Name != "" {
				pod = types.NamespacedName{Namespace: c.Spec.Pod.Namespace, Name: c.Spec.Pod.Name}
				uid = c.Spec.Pod.UID
			}
		}
	}
	held := "its claims (none found in the cache)"
	del := ""
	if len(names) > 0 {
		held = "its claims " + strings.Join(names, ", ")
		del = " (kubectl delete ipclaim " + strings.Join(names, " ") + ")"
	}
	s.cfg.Logger.Error("quarantined a DEL whose release the API server rejects for good; its addresses stay held until the record runs or its claims are deleted",
		"container_id", req.ContainerID, "interface", req.IfName, "pod", pod.String(), "claims", names, "tries", tries,
		"record", to, "err", cause)
	note := fmt.Sprintf("Quarantined the DEL of container %s (interface %q): %s stay held. The API server rejected their release "+
		"for good, %d times. Fix what refuses the write (an admission webhook or policy, berth-agent's RBAC), then move the record %s "+
		"back into %s and restart berth-agent on node %s, which runs it; or delete the claims%s. Error: %s",
		req.ContainerID, req.IfName, held, tries, to, s.cfg.QueueDir, s.cfg.Node, del, cause)
	s.warnOnPodOrNode(pod, uid, ReasonReleaseQuarantined, "Release", note)
	return nil
}

// quarantineMalformed moves a record that cannot be read as a DEL into
// quarantine; a record that cannot be moved either is removed (it would
// stop the queue forever and names no container to release).
func (s *Server) quarantineMalformed(f string, cause error) {
	to, err := s.moveToQuarantine(f)
	if errors.Is(err, errQuarantinedAlready) {
		return
	}
	if err != nil {
		s.cfg.Logger.Warn("dropping a malformed queued DEL that cannot be quarantined", "file", f, "err", cause, "quarantine_err", err)
		_ = os.RemoveAll(f)
		return
	}
	s.cfg.Logger.Warn("quarantined a malformed queued DEL", "file", f, "record", to, "err", cause)
	s.warnOnPodOrNode(types.NamespacedName{}, "", ReasonReleaseQuarantined, "Release", fmt.Sprintf(
		"Quarantined a queued DEL record that cannot be read: it is now %s. If it was the DEL of a container whose claims are still Bound, "+
			"delete those claims (kubectl get ipclaims) once the container is gone. Error: %s", to, cause))
}

// warnOnPodOrNode records a Warning Event on the pod if it exists (with
// uid, if set), else on the Node.
func (s *Server) warnOnPodOrNode(pod types.NamespacedName, uid types.UID, reason, action, note string) {
	rec := s.cfg.Recorder
	if rec == nil {
		return
	}
	var obj runtime.Object
	if pod.Name != "" {
		if p, err := s.cfg.Store.Pod(pod.Namespace, pod.Name); err == nil && (uid == "" || p.UID == uid) {
			obj = podObject(p.Namespace, p.Name, p.UID)
		}
	}
	if obj == nil {
		obj = s.nodeObject()
	}
	rec.Eventf(obj, nil, corev1.EventTypeWarning, reason, action, "%s", truncate(note, maxEventNote))
}

// truncate cuts s to at most n bytes (at a rune boundary), marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n - 3
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "..."
}
