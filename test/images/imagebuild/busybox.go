package imagebuild

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// BusyboxListTimeout bounds `busybox --list` within the caller's deadline.
const BusyboxListTimeout = 10 * time.Second

// BusyboxError is a failed `busybox --list`.
type BusyboxError struct {
	Path   string
	Stderr string
	Err    error
}

func (e *BusyboxError) Error() string {
	msg := fmt.Sprintf("busybox %s --list: %v", e.Path, e.Err)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

func (e *BusyboxError) Unwrap() error { return e.Err }

// BusyboxEntries returns the entries of a busybox image: the static busybox
// binary at bin as /bin/busybox (0755) and a symlink /bin/<applet> ->
// busybox for every applet that `busybox --list` prints.
func BusyboxEntries(ctx context.Context, bin string) ([]Entry, error) {
	applets, err := busyboxApplets(ctx, bin)
	if err != nil {
		return nil, err
	}
	entries := make([]Entry, 0, len(applets)+1)
	entries = append(entries, FileFrom("/bin/busybox", bin, 0o755))
	for _, a := range applets {
		entries = append(entries, Link("/bin/"+a, "busybox"))
	}
	return entries, nil
}

func busyboxApplets(ctx context.Context, bin string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, BusyboxListTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--list")
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.Env = []string{"LC_ALL=C"}
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = fmt.Errorf("%w (%w)", ctxErr, err)
		}
		return nil, &BusyboxError{Path: bin, Stderr: stderr.String(), Err: err}
	}
	seen := make(map[string]bool)
	var applets []string
	for _, line := range strings.Split(stdout.String(), "\n") {
		a := strings.TrimSpace(line)
		if a == "" || a == "busybox" || seen[a] {
			continue
		}
		if strings.Contains(a, "/") || a == "." || a == ".." {
			return nil, &BusyboxError{Path: bin, Err: fmt.Errorf("bad applet name %q", a)}
		}
		seen[a] = true
		applets = append(applets, a)
	}
	if len(applets) == 0 {
		return nil, &BusyboxError{Path: bin, Err: errors.New("no applets listed")}
	}
	return applets, nil
}
