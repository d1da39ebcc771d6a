package procstat

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestFields_self(t *testing.T) {
	f, err := Fields(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if len(f) < 13 {
		t.Fatalf("%d fields, want at least 13: %v", len(f), f)
	}
	if f[0] != "R" {
		t.Errorf("state %q, want R (this process is running)", f[0])
	}
	if ppid, err := strconv.Atoi(f[1]); err != nil || ppid != os.Getppid() {
		t.Errorf("parent %q, want %d", f[1], os.Getppid())
	}
}

func TestFields_noProcess(t *testing.T) {
	if _, err := Fields(-1); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want not exist", err)
	}
}

// TestCPU_self: CPU agrees with getrusage over 100 ms of this process's
// CPU (spent spinning; counted by CPU, not wall time, so that a loaded
// machine does not fail it), to within the two clock ticks (utime and
// stime) of /proc's granularity.
func TestCPU_self(t *testing.T) {
	rusage := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	before, rbefore := CPU(os.Getpid()), rusage()
	for deadline := time.Now().Add(10 * time.Second); rusage()-rbefore < 100*time.Millisecond && time.Now().Before(deadline); {
	}
	used, rused := CPU(os.Getpid())-before, rusage()-rbefore
	if rused < 100*time.Millisecond {
		t.Fatalf("10 s of spinning got %s of CPU", rused)
	}
	if d := used - rused; d < -30*time.Millisecond || d > 30*time.Millisecond {
		t.Errorf("CPU counted %s where getrusage counted %s", used, rused)
	}
	if CPU(-1) != 0 {
		t.Error("CPU of no process is not 0")
	}
}

func TestChildren(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if got := Children()["sleep"]; got != cmd.Process.Pid {
		t.Errorf("Children()[sleep] = %d, want %d", got, cmd.Process.Pid)
	}
}

// TestPin pins every thread of a child process (one that has started
// threads of its own) to one CPU, and reads each thread's affinity back.
func TestPin(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs 2 CPUs to see a change")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A Go program's runtime starts several threads.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, self, "-test.run=^TestPinChild$")
	cmd.Env = append(os.Environ(), "PROCSTAT_PIN_CHILD=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	var tasks []os.DirEntry
	for deadline := time.Now().Add(10 * time.Second); len(tasks) < 2; time.Sleep(10 * time.Millisecond) {
		if tasks, err = os.ReadDir(fmt.Sprintf("/proc/%d/task", pid)); err != nil || time.Now().After(deadline) {
			t.Fatalf("threads of %d: %d (%v)", pid, len(tasks), err)
		}
	}
	if err := Pin(pid, 1); err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &set); err != nil {
			continue // the thread ended
		}
		if set.Count() != 1 || !set.IsSet(1) {
			t.Errorf("thread %d of %d: affinity has %d CPUs, CPU 1 %v; want only CPU 1", tid, pid, set.Count(), set.IsSet(1))
		}
	}
	if err := Pin(-1, 0); err == nil {
		t.Error("Pin of no process: no error")
	}
}

// TestPinChild is TestPin's child process: it lives 30 s.
func TestPinChild(t *testing.T) {
	if os.Getenv("PROCSTAT_PIN_CHILD") == "" {
		t.Skip("TestPin's child process")
	}
	time.Sleep(30 * time.Second)
}
