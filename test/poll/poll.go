// Package poll waits in tests for a condition that another goroutine or
// process makes true.
package poll

import (
	"testing"
	"time"
)

// Interval is how often Until checks.
const Interval = 10 * time.Millisecond

// Until checks cond every Interval until it holds, and fails the test,
// naming what it waited for, if it does not within timeout.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(Interval)
	}
}
