package procstat

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
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

func TestCPU_self(t *testing.T) {
	before := CPU(os.Getpid())
	for start := time.Now(); time.Since(start) < 100*time.Millisecond; {
	}
	if used := CPU(os.Getpid()) - before; used < 50*time.Millisecond {
		t.Errorf("100 ms of spinning counted as %s of CPU", used)
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
