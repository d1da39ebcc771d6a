// Package cniinstall copies Berth's CNI plugin binaries from the image into
// the host's CNI bin directory (berth-agent install-cni, run by the
// DaemonSet's init container). A runtime may exec a plugin at any moment,
// so each file appears whole or not at all: it is written to a temporary
// file in the target directory and renamed over the old one.
package cniinstall

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Mode is the mode of an installed binary.
const Mode os.FileMode = 0o755

// Config says what to install where.
type Config struct {
	// From is the directory holding the binaries (in the image).
	From string
	// To is the host's CNI bin directory (a hostPath mount); it must exist.
	To string
	// Names are the binaries' file names.
	Names []string
}

// Installed reports one binary.
type Installed struct {
	Name string
	Path string
	// Changed is false when the file there was already identical.
	Changed bool
}

// ErrInvalid marks a bad Config.
var ErrInvalid = errors.New("invalid install-cni config")

func (c Config) validate() error {
	if !filepath.IsAbs(c.From) || !filepath.IsAbs(c.To) {
		return fmt.Errorf("%w: --from %q and --to %q must be absolute paths", ErrInvalid, c.From, c.To)
	}
	if len(c.Names) == 0 {
		return fmt.Errorf("%w: no binaries named", ErrInvalid)
	}
	for _, n := range c.Names {
		if n == "" || n == "." || n == ".." || filepath.Base(n) != n {
			return fmt.Errorf("%w: %q is not a file name", ErrInvalid, n)
		}
	}
	return nil
}

// Install copies every named binary from c.From to c.To, replacing each
// atomically and leaving identical files alone. It stops at the first
// error; the binaries already installed stay.
func Install(c Config) ([]Installed, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(c.To); err != nil {
		return nil, fmt.Errorf("target directory: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("target directory %s: not a directory", c.To)
	}
	out := make([]Installed, 0, len(c.Names))
	for _, n := range c.Names {
		in, err := install(filepath.Join(c.From, n), filepath.Join(c.To, n))
		if err != nil {
			return out, fmt.Errorf("install %s: %w", n, err)
		}
		out = append(out, in)
	}
	return out, nil
}

func install(src, dst string) (Installed, error) {
	in := Installed{Name: filepath.Base(dst), Path: dst}
	if fi, err := os.Stat(src); err != nil {
		return in, err
	} else if !fi.Mode().IsRegular() {
		return in, fmt.Errorf("%s: not a regular file", src)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return in, err
	}
	if same(dst, data) {
		return in, nil
	}

	dir := filepath.Dir(dst)
	tmp, err := os.CreateTemp(dir, "."+in.Name+".tmp-")
	if err != nil {
		return in, err
	}
	done := false
	defer func() {
		if !done {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, bytes.NewReader(data)); err != nil {
		return in, err
	}
	if err := tmp.Chmod(Mode); err != nil {
		return in, err
	}
	if err := tmp.Sync(); err != nil {
		return in, err
	}
	if err := tmp.Close(); err != nil {
		return in, err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return in, err
	}
	done = true
	syncDir(dir)
	in.Changed = true
	return in, nil
}

// same reports whether path is a regular file with mode Mode holding data.
func same(path string, data []byte) bool {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != Mode || fi.Size() != int64(len(data)) {
		return false
	}
	have, err := os.ReadFile(path)
	return err == nil && bytes.Equal(have, data)
}

// syncDir makes the rename durable; failing to is not an error for the
// install, which has happened.
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	_ = d.Sync()
	_ = d.Close()
}
