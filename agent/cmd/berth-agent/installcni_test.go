package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestRun_InstallCNI(t *testing.T) {
	from, to := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(from, "berth-netcheck"), []byte("netcheck"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{
			name:       "installs",
			args:       []string{"install-cni", "--from", from, "--to", to, "berth-netcheck"},
			wantStdout: filepath.Join(to, "berth-netcheck") + ": installed\n",
		},
		{
			name:       "again",
			args:       []string{"install-cni", "--from", from, "--to", to, "berth-netcheck"},
			wantStdout: filepath.Join(to, "berth-netcheck") + ": up to date\n",
		},
		{
			name:       "no names",
			args:       []string{"install-cni", "--from", from, "--to", to},
			wantCode:   2,
			wantStderr: "berth-agent install-cni: invalid install-cni config: no binaries named\n",
		},
		{
			name:       "missing binary",
			args:       []string{"install-cni", "--from", from, "--to", to, "berth-nope"},
			wantCode:   1,
			wantStderr: "berth-agent install-cni: install berth-nope: stat " + filepath.Join(from, "berth-nope") + ": no such file or directory\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, func(string) string { return "" }, &stdout, &stderr)
			if code != tc.wantCode || stdout.String() != tc.wantStdout || stderr.String() != tc.wantStderr {
				t.Errorf("run = %d, stdout %q, stderr %q;\nwant %d, %q, %q", code, stdout.String(), stderr.String(),
					tc.wantCode, tc.wantStdout, tc.wantStderr)
			}
		})
	}
	fi, err := os.Stat(filepath.Join(to, "berth-netcheck"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("installed binary: %v, %v; want mode 0755", fi, err)
	}
}
