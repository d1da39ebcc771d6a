package ipalloc

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/berth-io/berth/api/v1alpha1"
)

// Parsers of the Berth annotations a pod (or, for berth.io/ippool, its
// namespace) carries. Pure functions of the value; each error names the
// annotation, the value and what it wants.
//
// What a bad value does, per annotation: berth.io/ippool, ip-retain and
// ip-group fail the pod's ADD (ErrBadAnnotation, kubelet shows the message
// on the pod), since their defaults would give the pod an address the user
// did not ask for (another pool, its app's reserved address, another
// app's); berth.io/ip-release is an Event on the pod and its default
// applies (the addresses are released at the pod's CNI DEL, the safe
// choice).

// ReleaseEarly is the value of berth.io/ip-release that asks for early
// release.
const ReleaseEarly = "early"

// ParseRetain parses berth.io/ip-retain: "true" (the default when the
// annotation is absent) or "false" (a fresh address, freed with the pod).
func ParseRetain(v string) (bool, error) {
	retain, err := strconv.ParseBool(v)
	if err != nil || (v != "true" && v != "false") {
		return false, fmt.Errorf("%w: %s: %q: want \"true\" or \"false\"", ErrBadAnnotation, v1alpha1.AnnotationRetain, v)
	}
	return retain, nil
}

// ParseGroup parses berth.io/ip-group: a DNS label naming the pods (of one
// namespace) that share a reserve.
func ParseGroup(v string) (string, error) {
	if errs := validation.IsDNS1123Label(v); len(errs) > 0 {
		return "", fmt.Errorf("%w: %s: %q: %s", ErrBadAnnotation, v1alpha1.AnnotationGroup, v, strings.Join(errs, "; "))
	}
	return v, nil
}

// ParsePools parses berth.io/ippool: one or two pool names, comma-separated
// (spaces around them ignored). The error does not name the annotation:
// the caller says whether it is the pod's or its namespace's.
func ParsePools(v string) ([]string, error) {
	var out []string
	for _, n := range strings.Split(v, ",") {
		n = strings.TrimSpace(n)
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
			return nil, fmt.Errorf("%q: pool name %q: %s", v, n, strings.Join(errs, "; "))
		}
		out = append(out, n)
	}
	if len(out) > 2 {
		return nil, fmt.Errorf("%q: at most two pools (one IPv4, one IPv6)", v)
	}
	return out, nil
}

// ParseRelease parses berth.io/ip-release: "early" releases the pod's
// addresses when its deletion starts. Any other value is an error; the
// caller then applies the default (release at the pod's CNI DEL).
func ParseRelease(v string) (early bool, err error) {
	if v != ReleaseEarly {
		return false, fmt.Errorf("%w: %s: %q: want %q, or no annotation to release the addresses at the pod's CNI DEL",
			ErrBadAnnotation, v1alpha1.AnnotationRelease, v, ReleaseEarly)
	}
	return true, nil
}
