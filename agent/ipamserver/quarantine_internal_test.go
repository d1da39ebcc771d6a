package ipamserver

import (
	"errors"
	"fmt"
	"net"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

func TestRejectedForGood(t *testing.T) {
	claims := schema.GroupResource{Group: "berth.io", Resource: "ipclaims"}
	forbidden := apierrors.NewForbidden(claims, "p-10-0-0-7", errors.New(`User "system:serviceaccount:berth-system:berth-agent" cannot delete resource "ipclaims"`))
	invalid := apierrors.NewInvalid(schema.GroupKind{Group: "berth.io", Kind: "IPClaim"}, "p-10-0-0-7",
		field.ErrorList{field.Invalid(field.NewPath("spec", "state"), "Reserved", "denied by policy")})
	// A webhook's denial without a code: the API server answers 400 with
	// no reason.
	webhook := &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: 400,
		Message: `admission webhook "claims.example.com" denied the request: no`}}
	unreachable := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"RBAC forbidden", forbidden, true},
		{"validation or admission policy invalid", invalid, true},
		{"webhook denial, 400 without reason", webhook, true},
		{"bad request", apierrors.NewBadRequest("no"), true},
		{"wrapped forbidden", fmt.Errorf("claim x: release: %w", fmt.Errorf("delete ipclaim x: %w", forbidden)), true},
		{"joined, every one forbidden or invalid", errors.Join(forbidden, fmt.Errorf("claim y: %w", invalid)), true},
		{"joined with one unreachable", errors.Join(forbidden, unreachable), false},
		{"wrapped joined with one conflict", fmt.Errorf("x: %w", errors.Join(invalid, apierrors.NewConflict(claims, "y", errors.New("stale")))), false},
		{"empty join wrapper", fmt.Errorf("x: %w", errors.Join()), false},
		{"network error", unreachable, false},
		{"timeout", apierrors.NewTimeoutError("slow", 1), false},
		{"server timeout", apierrors.NewServerTimeout(claims, "delete", 1), false},
		{"throttled", apierrors.NewTooManyRequests("busy", 1), false},
		{"webhook unreachable, 500", apierrors.NewInternalError(errors.New(`failed calling webhook "claims.example.com": connection refused`)), false},
		{"service unavailable", apierrors.NewServiceUnavailable("down"), false},
		{"conflict", apierrors.NewConflict(claims, "x", errors.New("stale")), false},
		{"unauthorized (a token being rotated)", apierrors.NewUnauthorized("expired"), false},
		{"not found", apierrors.NewNotFound(claims, "x"), false},
		{"plain error", errors.New("too many concurrent changes"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rejectedForGood(tc.err); got != tc.want {
				t.Errorf("rejectedForGood(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"0123456789abc", 10, "0123456..."},
		{"ééééé", 8, "éé..."}, // é is 2 bytes: no rune is cut in half
	} {
		if got := truncate(tc.in, tc.n); got != tc.want || len(got) > tc.n {
			t.Errorf("truncate(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}
