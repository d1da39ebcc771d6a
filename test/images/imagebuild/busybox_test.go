package imagebuild

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeBusybox writes a shell script standing in for busybox.
func fakeBusybox(t *testing.T, script string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBusyboxEntries(t *testing.T) {
	bin := fakeBusybox(t, `printf '[\nbusybox\nls\nsh\n\nls\n'`)
	got, err := BusyboxEntries(context.Background(), bin)
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		FileFrom("/bin/busybox", bin, 0o755),
		Link("/bin/[", "busybox"),
		Link("/bin/ls", "busybox"),
		Link("/bin/sh", "busybox"),
	}
	if !slices.EqualFunc(got, want, func(a, b Entry) bool {
		return a.Path == b.Path && a.Kind == b.Kind && a.Source == b.Source && a.Target == b.Target && a.Mode == b.Mode
	}) {
		t.Errorf("BusyboxEntries() = %+v\nwant %+v", got, want)
	}
}

// TestBusyboxEntries_Debian builds an image from the real busybox-static
// (Debian package busybox-static), as `make images` does.
func TestBusyboxEntries_Debian(t *testing.T) {
	const bin = "/bin/busybox"
	entries, err := BusyboxEntries(context.Background(), bin)
	if err != nil {
		t.Fatalf("%v (install the Debian package busybox-static)", err)
	}
	paths := make(map[string]Entry)
	for _, e := range entries {
		paths[e.Path] = e
	}
	for _, applet := range []string{"sh", "ls", "cat", "sleep", "ip"} {
		if e, ok := paths["/bin/"+applet]; !ok || e.Kind != Symlink || e.Target != "busybox" {
			t.Errorf("no /bin/%s -> busybox: %+v", applet, e)
		}
	}
	img, err := Build(entries, Config{Entrypoint: []string{"/bin/sh"}})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "busybox.tar")
	if err := Write(out, testTag, img); err != nil {
		t.Fatal(err)
	}
	_, files, _ := readImage(t, out)
	want, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if got := files["bin/busybox"]; got.content != string(want) || got.mode != 0o755 {
		t.Errorf("bin/busybox: mode %o, %d bytes; want 755, %d bytes", got.mode, len(got.content), len(want))
	}
}

func TestBusyboxEntries_Errors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "busybox")
	tests := []struct {
		name   string
		script string
		bin    string
		want   string
	}{
		{
			name:   "fails",
			script: "echo 'applet not found' >&2; exit 3",
			want:   "--list: exit status 3: applet not found",
		},
		{
			name:   "lists nothing",
			script: "exit 0",
			want:   "--list: no applets listed",
		},
		{
			name:   "bad applet name",
			script: "echo ../sh",
			want:   `--list: bad applet name "../sh"`,
		},
		{
			name: "missing binary",
			bin:  missing,
			want: "busybox " + missing + " --list: fork/exec " + missing + ": no such file or directory",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bin := tt.bin
			want := tt.want
			if bin == "" {
				bin = fakeBusybox(t, tt.script)
				want = "busybox " + bin + " " + tt.want
			}
			_, err := BusyboxEntries(context.Background(), bin)
			if err == nil || err.Error() != want {
				t.Errorf("BusyboxEntries() error = %v, want %q", err, want)
			}
			var be *BusyboxError
			if !errors.As(err, &be) {
				t.Errorf("error %T is not a *BusyboxError", err)
			}
		})
	}
}

func TestBusyboxEntries_Timeout(t *testing.T) {
	bin := fakeBusybox(t, "exec sleep 30")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := BusyboxEntries(ctx, bin)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("BusyboxEntries() error = %v, want a deadline error", err)
	}
	if !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("error %q does not say the process was killed", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v with a 200ms deadline", d)
	}
}
