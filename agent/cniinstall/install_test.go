package cniinstall

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func write(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) (string, os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), fi.Mode()
}

// entries lists dir's file names.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestInstall(t *testing.T) {
	from, to := t.TempDir(), t.TempDir()
	write(t, filepath.Join(from, "berth-netcheck"), "new netcheck", 0o700)
	write(t, filepath.Join(from, "berth-ipam"), "ipam", 0o755)
	write(t, filepath.Join(to, "berth-netcheck"), "old netcheck", 0o644)
	write(t, filepath.Join(to, "bridge"), "bridge", 0o755)

	got, err := Install(Config{From: from, To: to, Names: []string{"berth-netcheck", "berth-ipam"}})
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	want := []Installed{
		{Name: "berth-netcheck", Path: filepath.Join(to, "berth-netcheck"), Changed: true},
		{Name: "berth-ipam", Path: filepath.Join(to, "berth-ipam"), Changed: true},
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("Install = %+v, want %+v", got, want)
	}
	for name, data := range map[string]string{"berth-netcheck": "new netcheck", "berth-ipam": "ipam", "bridge": "bridge"} {
		if d, m := read(t, filepath.Join(to, name)); d != data || m != 0o755 {
			t.Errorf("%s: %q mode %v, want %q mode 0755", name, d, m, data)
		}
	}
	if names := entries(t, to); len(names) != 3 {
		t.Errorf("target holds %v: a temporary file was left", names)
	}

	// Again: nothing changes, not even the files' times.
	before, _ := os.Stat(filepath.Join(to, "berth-netcheck"))
	got, err = Install(Config{From: from, To: to, Names: []string{"berth-netcheck"}})
	if err != nil || len(got) != 1 || got[0].Changed {
		t.Errorf("second Install = %+v, %v; want unchanged", got, err)
	}
	after, _ := os.Stat(filepath.Join(to, "berth-netcheck"))
	if !os.SameFile(before, after) {
		t.Error("an identical binary was replaced")
	}
}

// TestInstall_ReplacesRunningBinary: the binary is replaced while a process
// runs it (writing into it would fail with ETXTBSY), and the process runs on.
func TestInstall_ReplacesRunningBinary(t *testing.T) {
	from, to := t.TempDir(), t.TempDir()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(to, "plugin"), string(b), 0o755)
	write(t, filepath.Join(from, "plugin"), "#!/bin/sh\necho new\n", 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(to, "plugin"), "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	if _, err := Install(Config{From: from, To: to, Names: []string{"plugin"}}); err != nil {
		t.Fatalf("Install over a running binary: %v", err)
	}
	out, err := exec.CommandContext(ctx, filepath.Join(to, "plugin")).Output()
	if err != nil || string(out) != "new\n" {
		t.Errorf("the new binary: %q, %v", out, err)
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the process running the old binary: %v", err)
	}
}

func TestInstall_Errors(t *testing.T) {
	from, to := t.TempDir(), t.TempDir()
	write(t, filepath.Join(from, "berth-netcheck"), "netcheck", 0o755)
	if err := os.Mkdir(filepath.Join(from, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "relative from", cfg: Config{From: "bin", To: to, Names: []string{"berth-netcheck"}},
			wantErr: `invalid install-cni config: --from "bin" and --to "` + to + `" must be absolute paths`},
		{name: "no names", cfg: Config{From: from, To: to},
			wantErr: "invalid install-cni config: no binaries named"},
		{name: "a path as name", cfg: Config{From: from, To: to, Names: []string{"../etc/passwd"}},
			wantErr: `invalid install-cni config: "../etc/passwd" is not a file name`},
		{name: "dot dot", cfg: Config{From: from, To: to, Names: []string{".."}},
			wantErr: `invalid install-cni config: ".." is not a file name`},
		{name: "missing binary", cfg: Config{From: from, To: to, Names: []string{"berth-netcheck", "berth-nope"}},
			wantErr: "install berth-nope: stat " + filepath.Join(from, "berth-nope") + ": no such file or directory"},
		{name: "not a file", cfg: Config{From: from, To: to, Names: []string{"adir"}},
			wantErr: "install adir: " + filepath.Join(from, "adir") + ": not a regular file"},
		{name: "missing target", cfg: Config{From: from, To: filepath.Join(to, "nope"), Names: []string{"berth-netcheck"}},
			wantErr: "target directory: stat " + filepath.Join(to, "nope") + ": no such file or directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Install(tc.cfg)
			if err == nil || err.Error() != tc.wantErr {
				t.Fatalf("Install error\n got  %v\n want %s", err, tc.wantErr)
			}
		})
	}
	// Only the binaries installed before the error are there, no temporary files.
	names := entries(t, to)
	if len(names) != 1 || names[0] != "berth-netcheck" {
		t.Errorf("target holds %v, want [berth-netcheck]", names)
	}
}
