package procstat

import (
	"errors"
	"os"
	"strconv"
	"testing"
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
