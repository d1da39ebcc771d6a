// Package runnable runs a component's Start(ctx) in a test the way a
// controller-runtime manager runs a Runnable: in the background until the
// test ends, when its context is cancelled and it must return nil.
package runnable

import (
	"context"
	"sync"
	"testing"
	"time"
)

// Start runs start in a goroutine until the test ends, or until the
// returned stop is called. Either cancels start's context and fails the
// test unless start returns nil within timeout; stop returns once it has.
func Start(t testing.TB, timeout time.Duration, start func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- start(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Start() = %v after its context ended, want nil", err)
				}
			case <-time.After(timeout):
				t.Errorf("Start did not return within %s of its context ending", timeout)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}
