package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-io/berth/test/poll"
	"github.com/berth-io/berth/test/procstat"
)

// The test binary runs as pause when this variable is set.
const runAsPause = "BERTH_TEST_RUN_PAUSE"

func TestMain(m *testing.M) {
	if os.Getenv(runAsPause) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startPause runs the test binary as pause and waits until it handles
// signals: pause reports that (not being PID 1 here) on stderr right after
// signal.Notify. The Go runtime catches SIGTERM from its first instruction,
// so /proc's SigCgt cannot tell that Notify ran. The returned function
// gives stderr once the process has exited.
func startPause(t *testing.T, args ...string) (*exec.Cmd, func() string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runAsPause+"=1")
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan struct{})
	var all strings.Builder
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			all.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "not PID 1") {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-done:
		t.Fatalf("pause exited before handling signals; stderr: %s", all.String())
	case <-time.After(10 * time.Second):
		t.Fatal("pause did not report handling signals within 10s")
	}
	return cmd, func() string { <-done; return all.String() }
}

func TestPause_Signals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd, stderr := startPause(t)
			// A SIGCHLD without children must not stop it.
			if err := cmd.Process.Signal(syscall.SIGCHLD); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("pause exited with %v after %v, want 0; stderr: %s", err, sig, stderr())
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("pause still running 10s after %v", sig)
			}
		})
	}
}

func TestPause_Version(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-v")
	cmd.Env = append(os.Environ(), runAsPause+"=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(out), version+"\n"; got != want {
		t.Errorf("pause -v printed %q, want %q", got, want)
	}
}

func TestReap(t *testing.T) {
	// A child nobody waits for, as an orphan re-parented to pause would be.
	pid, err := syscall.ForkExec("/bin/true", []string{"true"}, &syscall.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, fmt.Sprintf("child %d to exit", pid), func() bool { return isZombie(pid) })
	if n := reap(); n != 1 {
		t.Errorf("reap() = %d, want 1", n)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("child %d still in /proc after reap: %v", pid, err)
	}
	if n := reap(); n != 0 {
		t.Errorf("second reap() = %d, want 0", n)
	}
}

func isZombie(pid int) bool {
	f, err := procstat.Fields(pid)
	return err == nil && len(f) > 0 && f[0] == "Z"
}
