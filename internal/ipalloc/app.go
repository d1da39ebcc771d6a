package ipalloc

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/berth-io/berth/api/v1alpha1"
)

// AppOf returns the app a pod's addresses are retained for, or nil when they
// are not retained: the pod opted out (berth.io/ip-retain: "false"), or its
// top owner is not a Deployment, ReplicaSet or StatefulSet (Job and
// DaemonSet pods, bare pods) and it has no berth.io/ip-group.
func AppOf(s Store, pod *corev1.Pod) (*v1alpha1.App, error) {
	if v, ok := pod.Annotations[v1alpha1.AnnotationRetain]; ok {
		retain, err := ParseRetain(v)
		if err != nil {
			return nil, err
		}
		if !retain {
			return nil, nil
		}
	}
	if v, ok := pod.Annotations[v1alpha1.AnnotationGroup]; ok {
		g, err := ParseGroup(v)
		if err != nil {
			return nil, err
		}
		return &v1alpha1.App{Kind: v1alpha1.AppGroup, Namespace: pod.Namespace, Name: g}, nil
	}
	owner := metav1.GetControllerOf(pod)
	if owner == nil {
		return nil, nil
	}
	switch owner.Kind {
	case "StatefulSet":
		i := strings.LastIndex(pod.Name, "-")
		ord, err := strconv.ParseInt(pod.Name[i+1:], 10, 32)
		if i < 0 || err != nil || pod.Name[:i] != owner.Name {
			// Not a StatefulSet-made name: retain for the set, no ordinal.
			return &v1alpha1.App{Kind: v1alpha1.AppStatefulSet, Namespace: pod.Namespace, Name: owner.Name}, nil
		}
		o := int32(ord)
		return &v1alpha1.App{Kind: v1alpha1.AppStatefulSet, Namespace: pod.Namespace, Name: owner.Name, Ordinal: &o}, nil
	case "ReplicaSet":
		app := &v1alpha1.App{Kind: v1alpha1.AppReplicaSet, Namespace: pod.Namespace, Name: owner.Name}
		rs, err := s.ReplicaSet(pod.Namespace, owner.Name)
		switch {
		case err == nil:
			if d := metav1.GetControllerOf(rs); d != nil && d.Kind == "Deployment" {
				app.Kind, app.Name = v1alpha1.AppDeployment, d.Name
			}
		case errors.Is(err, ErrNotFound):
			// Not in the cache yet: a Deployment's ReplicaSet is named
			// <deployment>-<pod-template-hash>.
			if h := pod.Labels["pod-template-hash"]; h != "" && strings.HasSuffix(owner.Name, "-"+h) {
				app.Kind, app.Name = v1alpha1.AppDeployment, strings.TrimSuffix(owner.Name, "-"+h)
			}
		default:
			return nil, fmt.Errorf("replicaset %s/%s: %w", pod.Namespace, owner.Name, err)
		}
		return app, nil
	}
	return nil, nil
}

// poolsFor returns the pools the pod takes addresses from, one per IP
// family: the pod's berth.io/ippool, else its namespace's, else the CNI
// configuration's, else every pool whose selectors match (first by name per
// family). Named pools must exist and admit the pod.
func poolsFor(s Store, pod *corev1.Pod, ns *corev1.Namespace, configured []string) ([]*v1alpha1.IPPool, error) {
	var names []string
	var source string
	if v, ok := pod.Annotations[v1alpha1.AnnotationPool]; ok {
		source = "pod annotation " + v1alpha1.AnnotationPool
		var err error
		if names, err = ParsePools(v); err != nil {
			return nil, &Error{Kind: ErrBadAnnotation, Reason: fmt.Sprintf("%s: %v", source, err)}
		}
	} else if v, ok := ns.Annotations[v1alpha1.AnnotationPool]; ok {
		source = "namespace annotation " + v1alpha1.AnnotationPool
		var err error
		if names, err = ParsePools(v); err != nil {
			return nil, &Error{Kind: ErrBadAnnotation, Reason: fmt.Sprintf("%s: %v", source, err)}
		}
	} else if len(configured) > 0 {
		source, names = "CNI configuration", configured
	}

	if names != nil {
		var out []*v1alpha1.IPPool
		var families []bool
		for _, n := range names {
			p, err := s.Pool(n)
			if errors.Is(err, ErrNotFound) {
				return nil, &Error{Pool: n, Kind: ErrUnknownPool, Reason: fmt.Sprintf("no IPPool %q (from the %s)", n, source)}
			}
			if err != nil {
				return nil, &Error{Pool: n, Kind: ErrUnknownPool, Reason: err.Error()}
			}
			if why := admits(p, pod, ns); why != "" {
				return nil, &Error{Pool: n, Kind: ErrForbidden, Reason: "the pool may not be used by this pod: " + why}
			}
			v4 := isV4(p)
			for _, f := range families {
				if f == v4 {
					return nil, &Error{Pool: n, Kind: ErrBadAnnotation, Reason: fmt.Sprintf("%s names two pools of one IP family", source)}
				}
			}
			families = append(families, v4)
			out = append(out, p)
		}
		return out, nil
	}

	all, err := s.Pools()
	if err != nil {
		return nil, err
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	var v4, v6 *v1alpha1.IPPool
	for _, p := range all {
		if admits(p, pod, ns) != "" {
			continue
		}
		if isV4(p) && v4 == nil {
			v4 = p
		} else if !isV4(p) && v6 == nil {
			v6 = p
		}
	}
	var out []*v1alpha1.IPPool
	for _, p := range []*v1alpha1.IPPool{v4, v6} {
		if p != nil {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, &Error{Kind: ErrNoPool, Reason: fmt.Sprintf("no IPPool admits the pod (of %d pools) and no %s annotation names one", len(all), v1alpha1.AnnotationPool)}
	}
	return out, nil
}

// admits returns why the pool's selectors reject the pod, or "".
func admits(p *v1alpha1.IPPool, pod *corev1.Pod, ns *corev1.Namespace) string {
	if p.DeletionTimestamp != nil {
		return "it is being deleted (it goes once the pods holding its addresses have released them)"
	}
	if sel := p.Spec.NamespaceSelector; sel != nil {
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			return "its namespaceSelector is invalid: " + err.Error()
		}
		if !s.Matches(labels.Set(ns.Labels)) {
			return fmt.Sprintf("namespace %s does not match its namespaceSelector %s", ns.Name, s)
		}
	}
	if sel := p.Spec.PodSelector; sel != nil {
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			return "its podSelector is invalid: " + err.Error()
		}
		if !s.Matches(labels.Set(pod.Labels)) {
			return fmt.Sprintf("the pod's labels do not match its podSelector %s", s)
		}
	}
	return ""
}

func isV4(p *v1alpha1.IPPool) bool {
	pfx, err := netip.ParsePrefix(p.Spec.CIDR)
	return err != nil || pfx.Addr().Is4()
}
