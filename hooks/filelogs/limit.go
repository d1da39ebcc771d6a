package filelogs

import (
	"fmt"

	"k8s.io/apimachinery/pkg/api/resource"
)

// AnnotationSizeLimit on a pod sets the size limit of the file logs of
// each of its containers (the disk space of all the log directories of one
// container together): a Kubernetes quantity of bytes, e.g. "500Mi" or
// "2Gi", at most the node's maximum (berth-agent --filelogs-max-size-limit).
// Without it a container gets the node's default (--filelogs-size-limit).
const AnnotationSizeLimit = "berth.io/filelogs-size-limit"

// AnnotationError is a bad value of a Berth annotation on a pod. Its text
// names the annotation and the value and says what to fix, e.g.
//
//	annotation berth.io/filelogs-size-limit="10GB": not a Kubernetes quantity: want e.g. "500Mi" or "2Gi"
type AnnotationError struct {
	// Annotation is the annotation's name.
	Annotation string
	// Value is its value.
	Value string
	// Reason says what is wrong and what to do.
	Reason string
}

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("annotation %s=%q: %s", e.Annotation, e.Value, e.Reason)
}

// SizeLimit returns the size limit that the annotations of a pod ask for
// (AnnotationSizeLimit): the bytes and true, or 0 and false when the
// annotation is not set. max (> 0) is the largest limit the node allows.
// A value that is not a whole positive number of bytes written as a
// Kubernetes quantity, or that is above max, is an *AnnotationError.
func SizeLimit(annotations map[string]string, max int64) (int64, bool, error) {
	value, ok := annotations[AnnotationSizeLimit]
	if !ok {
		return 0, false, nil
	}
	n, err := ParseSizeLimit(value, max)
	if err != nil {
		return 0, false, err
	}
	return n, true, nil
}

// ParseSizeLimit parses a value of AnnotationSizeLimit; see SizeLimit.
func ParseSizeLimit(value string, max int64) (int64, error) {
	bad := func(format string, args ...any) error {
		return &AnnotationError{Annotation: AnnotationSizeLimit, Value: value, Reason: fmt.Sprintf(format, args...)}
	}
	maxQ := resource.NewQuantity(max, resource.BinarySI)
	q, err := resource.ParseQuantity(value)
	if err != nil {
		return 0, bad(`not a Kubernetes quantity: want bytes with an optional suffix, e.g. "500Mi" or "2Gi"`)
	}
	if q.Sign() <= 0 {
		return 0, bad("want a size above 0, at most %s", maxQ)
	}
	if q.Cmp(*maxQ) > 0 {
		return 0, bad("above this node's maximum of %s (berth-agent --filelogs-max-size-limit): want at most %s", maxQ, maxQ)
	}
	n := q.Value() // rounded up; exact below max
	if whole := resource.NewQuantity(n, resource.BinarySI); whole.Cmp(q) != 0 {
		return 0, bad("not a whole number of bytes: want e.g. %q", whole.String())
	}
	return n, nil
}
