package ipalloc

import (
	"errors"
	"fmt"
)

// Kinds of allocation errors; an *Error unwraps to one of them.
var (
	ErrUnknownPool    = errors.New("unknown pool")
	ErrExhausted      = errors.New("pool exhausted")
	ErrForbidden      = errors.New("pool not allowed for the pod")
	ErrBadAnnotation  = errors.New("malformed annotation")
	ErrBadPool        = errors.New("invalid pool")
	ErrNoPool         = errors.New("no pool for the pod")
	ErrPodUnknown     = errors.New("pod not found")
	ErrHeld           = errors.New("address still held by a terminating pod")
	ErrTooManyRetries = errors.New("too many concurrent changes")
)

// Error is an allocation error naming the pod, the pool and the reason.
type Error struct {
	Pod    string // namespace/name
	Pool   string // may be empty
	Kind   error  // one of the Err* kinds above
	Reason string
}

func (e *Error) Error() string {
	s := "pod " + e.Pod
	if e.Pool != "" {
		s += ", pool " + e.Pool
	}
	return s + ": " + e.Reason
}

func (e *Error) Unwrap() error { return e.Kind }

// Retryable reports whether the runtime should retry ADD later: the error
// waits on something that resolves itself (a terminating pod's teardown, a
// cache that has not seen the pod yet, contention).
func Retryable(err error) bool {
	return errors.Is(err, ErrHeld) || errors.Is(err, ErrPodUnknown) || errors.Is(err, ErrTooManyRetries)
}

func newError(pod, pool string, kind error, format string, args ...any) *Error {
	return &Error{Pod: pod, Pool: pool, Kind: kind, Reason: fmt.Sprintf(format, args...)}
}
