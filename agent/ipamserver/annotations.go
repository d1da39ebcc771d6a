package ipamserver

import (
	"context"
	"errors"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/ipalloc"
)

// Berth annotations whose value the agent does not understand: those
// whose default would give the pod an address the user did not ask for
// (berth.io/ippool, ip-retain, ip-group) fail its ADD, and kubelet shows
// the message on the pod; the others (berth.io/ip-release) keep their
// default and are a Warning Event on the pod, recorded once per pod and
// value (by this run of the agent), when the agent sees the pod scheduled
// to its node or annotated later (with a pod cache), else at its ADD.

// ReasonBadAnnotation is the reason of the Warning Event on a pod whose
// Berth annotation has a value the agent does not understand and whose
// default applies.
const ReasonBadAnnotation = "BadBerthAnnotation"

// annotationWarnings returns the notes of the Events a pod's Berth
// annotations call for: one per annotation whose value is not understood
// and whose default applies.
func annotationWarnings(pod *corev1.Pod) []string {
	var out []string
	if v, ok := pod.Annotations[v1alpha1.AnnotationRelease]; ok {
		if _, err := ipalloc.ParseRelease(v); err != nil {
			out = append(out, fmt.Sprintf("%v; until it is fixed the pod's addresses are released at its CNI DEL, after its containers stopped", err))
		}
	}
	return out
}

// warnedPod is a pod whose annotation Events were recorded.
type warnedPod struct {
	key   types.NamespacedName
	notes []string
}

// warnAnnotations records an Event on pod for each of its annotation
// warnings not recorded yet for it.
func (s *Server) warnAnnotations(pod *corev1.Pod) {
	rec := s.cfg.Recorder
	if rec == nil {
		return
	}
	notes := annotationWarnings(pod)
	if len(notes) == 0 {
		return
	}
	s.warnedMu.Lock()
	if s.warned == nil {
		s.warned = map[types.UID]*warnedPod{}
	}
	w := s.warned[pod.UID]
	if w == nil {
		s.forgetGonePods()
		w = &warnedPod{key: types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}}
		s.warned[pod.UID] = w
	}
	var fresh []string
	for _, n := range notes {
		if !slices.Contains(w.notes, n) {
			w.notes = append(w.notes, n)
			fresh = append(fresh, n)
		}
	}
	s.warnedMu.Unlock()
	ref := podObject(pod.Namespace, pod.Name, pod.UID)
	for _, n := range fresh {
		s.cfg.Logger.Warn("a Berth annotation has a value the agent does not understand; its default applies", "pod", pod.Namespace+"/"+pod.Name, "err", n)
		rec.Eventf(ref, nil, corev1.EventTypeWarning, ReasonBadAnnotation, "ReadAnnotations", "%s", n)
	}
}

// forgetGonePods drops the pods that are gone from the warned set (those
// the pod informer's deletions did not, e.g. seen only at ADD). Called
// with warnedMu held.
func (s *Server) forgetGonePods() {
	for uid, w := range s.warned {
		p, err := s.cfg.Store.Pod(w.key.Namespace, w.key.Name)
		if errors.Is(err, ipalloc.ErrNotFound) || err == nil && p.UID != uid {
			delete(s.warned, uid)
		}
	}
}

// warnAnnotationsAtAdd checks the annotations of the pod of an ADD, as
// the store has it, unless the pod watch does (it saw the pod scheduled
// to the node before its ADD): no read on the ADD's path then.
func (s *Server) warnAnnotationsAtAdd(namespace, name string, uid types.UID) {
	if s.cfg.Recorder == nil || s.watchingAnnotations.Load() {
		return
	}
	if pod, err := s.cfg.Store.Pod(namespace, name); err == nil && (uid == "" || pod.UID == uid) {
		s.warnAnnotations(pod)
	}
}

// watchAnnotations checks the annotations of the pods of this node as the
// pod cache sees them (scheduled, annotated later), until ctx is done.
func (s *Server) watchAnnotations(ctx context.Context) error {
	inf, err := s.cfg.PodCache.GetInformer(ctx, &corev1.Pod{})
	if err != nil {
		return err
	}
	on := func(obj any) {
		if pod, ok := obj.(*corev1.Pod); ok && pod.Spec.NodeName == s.cfg.Node {
			s.warnAnnotations(pod)
		}
	}
	_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: on, UpdateFunc: func(_, n any) { on(n) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				s.warnedMu.Lock()
				delete(s.warned, pod.UID)
				s.warnedMu.Unlock()
			}
		},
	})
	if err == nil {
		s.watchingAnnotations.Store(true)
	}
	return err
}
