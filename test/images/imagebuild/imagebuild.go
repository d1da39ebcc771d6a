// Package imagebuild assembles single-layer linux/amd64 container images from
// host files, symlinks and directories, and writes them as docker-archive
// tarballs that `ctr -n k8s.io images import` accepts. It needs no Docker
// engine and no registry.
//
// Output is deterministic: every entry has the same owner (root) and
// modification time (Epoch), entries are written in sorted order, and the
// config carries no build time, so the same inputs give the same digest.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Epoch is the modification time of every entry and the creation time of
// every image, so that builds are reproducible.
var Epoch = time.Unix(0, 0).UTC()

// DefaultPath is the PATH put in the image config when Config.Env has none.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Platform of every image built here.
const (
	OS           = "linux"
	Architecture = "amd64"
)

// Kind is what an Entry puts into the image.
type Kind int

// Kinds of entries.
const (
	File Kind = iota + 1
	Symlink
	Dir
)

func (k Kind) String() string {
	switch k {
	case File:
		return "file"
	case Symlink:
		return "symlink"
	case Dir:
		return "directory"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Entry is one file, symlink or directory in the image.
type Entry struct {
	// Path is the absolute, clean path in the image, e.g. "/bin/busybox".
	Path string
	Kind Kind
	// Source is the host path a File is copied from (symlinks on the host
	// are followed). When empty, the file's content is Data.
	Source string
	// Data is the content of a File without Source.
	Data []byte
	// Target is where a Symlink points, as stored (relative or absolute).
	Target string
	// Mode holds the permission bits of a File or Dir, optionally with
	// fs.ModeSetuid, fs.ModeSetgid and fs.ModeSticky. Zero means the
	// default: 0755 for a Dir, and for a File 0755 when its source is
	// executable by anyone, 0644 otherwise.
	Mode fs.FileMode
}

// FileFrom is a File entry copied from the host path src.
func FileFrom(dst, src string, mode fs.FileMode) Entry {
	return Entry{Path: dst, Kind: File, Source: src, Mode: mode}
}

// FileData is a File entry holding data.
func FileData(dst string, data []byte, mode fs.FileMode) Entry {
	return Entry{Path: dst, Kind: File, Data: data, Mode: mode}
}

// Link is a Symlink entry at dst pointing to target.
func Link(dst, target string) Entry {
	return Entry{Path: dst, Kind: Symlink, Target: target}
}

// Directory is a Dir entry.
func Directory(dst string, mode fs.FileMode) Entry {
	return Entry{Path: dst, Kind: Dir, Mode: mode}
}

// Config is the part of the OCI image config that the images here set.
type Config struct {
	Entrypoint []string
	Cmd        []string
	// Env holds KEY=VALUE pairs. DefaultPath is added when no PATH is set.
	Env []string
	// WorkingDir, when set, must be absolute; the directory is created
	// unless an entry provides it.
	WorkingDir string
	User       string
	Labels     map[string]string
}

// BaseEntries are put into every image unless an entry of the build has the
// same path: the usual mount points and a minimal /etc for root and nobody.
func BaseEntries() []Entry {
	return []Entry{
		Directory("/tmp", 0o777|fs.ModeSticky),
		Directory("/proc", 0o555),
		Directory("/sys", 0o555),
		Directory("/dev", 0o755),
		Directory("/etc", 0o755),
		Directory("/var", 0o755),
		Directory("/run", 0o755),
		Directory("/root", 0o700),
		FileData("/etc/passwd", []byte(
			"root:x:0:0:root:/root:/bin/sh\n"+
				"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), 0o644),
		FileData("/etc/group", []byte(
			"root:x:0:\n"+
				"nobody:x:65534:\n"), 0o644),
		FileData("/etc/nsswitch.conf", []byte("hosts: files dns\n"), 0o644),
	}
}

// Overlay returns base without the entries whose path is also in top,
// followed by top: entries of top replace those of base.
func Overlay(base, top []Entry) []Entry {
	shadowed := make(map[string]bool, len(top))
	for _, e := range top {
		shadowed[e.Path] = true
	}
	out := make([]Entry, 0, len(base)+len(top))
	for _, e := range base {
		if !shadowed[e.Path] {
			out = append(out, e)
		}
	}
	return append(out, top...)
}

// Build returns a single-layer linux/amd64 image holding BaseEntries
// overlaid with entries (and any missing parent directories, 0755), with
// the config cfg. Two entries of entries with the same path are an error.
// Source files are read during Build.
func Build(entries []Entry, cfg Config) (v1.Image, error) {
	env, err := validateConfig(cfg)
	if err != nil {
		return nil, err
	}
	base := BaseEntries()
	if cfg.WorkingDir != "" {
		base = append(base, Directory(cfg.WorkingDir, 0o755))
	}
	layerTar, err := buildLayer(Overlay(base, entries))
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: Epoch},
			CreatedBy: "berth imagebuild",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = OS
	cf.Architecture = Architecture
	cf.Created = v1.Time{Time: Epoch}
	cf.Config = v1.Config{
		Entrypoint: slices.Clone(cfg.Entrypoint),
		Cmd:        slices.Clone(cfg.Cmd),
		Env:        env,
		WorkingDir: cfg.WorkingDir,
		User:       cfg.User,
	}
	if len(cfg.Labels) > 0 {
		cf.Config.Labels = maps.Clone(cfg.Labels)
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return img, nil
}

// validateConfig checks cfg and returns its environment with DefaultPath
// added when PATH is missing.
func validateConfig(cfg Config) ([]string, error) {
	env := make([]string, 0, len(cfg.Env)+1)
	seen := make(map[string]bool, len(cfg.Env))
	for _, kv := range cfg.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("env %q: want KEY=VALUE", kv)
		}
		if seen[k] {
			return nil, fmt.Errorf("env %q: %s is set twice", kv, k)
		}
		seen[k] = true
		env = append(env, kv)
	}
	if !seen["PATH"] {
		env = append([]string{DefaultPath}, env...)
	}
	if cfg.WorkingDir != "" {
		if err := checkPath(cfg.WorkingDir); err != nil {
			return nil, fmt.Errorf("working dir %q: %w", cfg.WorkingDir, err)
		}
	}
	for k := range cfg.Labels {
		if k == "" {
			return nil, errors.New("label with an empty key")
		}
	}
	return env, nil
}

// checkPath checks that p is an absolute, clean path other than "/".
func checkPath(p string) error {
	switch {
	case !path.IsAbs(p):
		return errors.New("path must be absolute")
	case path.Clean(p) != p:
		return fmt.Errorf("path is not clean, use %q", path.Clean(p))
	case p == "/":
		return errors.New("the root directory cannot be an entry")
	}
	return nil
}

const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// tarMode converts mode to the mode field of a tar header.
func tarMode(mode fs.FileMode) int64 {
	m := int64(mode.Perm())
	if mode&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	if mode&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if mode&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	return m
}

// buildLayer returns the uncompressed layer tar of entries, sorted by path,
// with missing parent directories added.
func buildLayer(entries []Entry) ([]byte, error) {
	byPath := make(map[string]Entry, len(entries))
	for _, e := range entries {
		if err := checkPath(e.Path); err != nil {
			return nil, fmt.Errorf("entry %q: %w", e.Path, err)
		}
		if _, dup := byPath[e.Path]; dup {
			return nil, fmt.Errorf("entry %q: duplicate path", e.Path)
		}
		if err := checkEntry(e); err != nil {
			return nil, err
		}
		byPath[e.Path] = e
	}
	// Add missing parents; an existing parent must be a directory.
	for _, e := range entries {
		for dir := path.Dir(e.Path); dir != "/"; dir = path.Dir(dir) {
			p, ok := byPath[dir]
			if !ok {
				byPath[dir] = Directory(dir, 0o755)
				continue
			}
			if p.Kind != Dir {
				return nil, fmt.Errorf("entry %q: parent %q is a %s, not a directory", e.Path, dir, p.Kind)
			}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	// Byte order puts every directory before its contents.
	slices.Sort(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		if err := writeEntry(tw, byPath[p]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer tar: %w", err)
	}
	return buf.Bytes(), nil
}

func checkEntry(e Entry) error {
	if e.Mode&^modeBits != 0 {
		return fmt.Errorf("%s %q: mode %#o has bits other than permissions and fs.ModeSetuid, fs.ModeSetgid, fs.ModeSticky", e.Kind, e.Path, uint32(e.Mode))
	}
	switch e.Kind {
	case File:
		if e.Source != "" && e.Data != nil {
			return fmt.Errorf("file %q: has both a source and data", e.Path)
		}
	case Symlink:
		if e.Target == "" {
			return fmt.Errorf("symlink %q: empty target", e.Path)
		}
		if e.Mode != 0 {
			return fmt.Errorf("symlink %q: a symlink has no mode", e.Path)
		}
	case Dir:
	default:
		return fmt.Errorf("entry %q: unknown kind %d", e.Path, int(e.Kind))
	}
	return nil
}

func writeEntry(tw *tar.Writer, e Entry) error {
	hdr := &tar.Header{
		Name:    strings.TrimPrefix(e.Path, "/"),
		ModTime: Epoch,
	}
	switch e.Kind {
	case Dir:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		hdr.Mode = tarMode(orDefault(e.Mode, 0o755))
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("directory %q: %w", e.Path, err)
		}
		return nil
	case Symlink:
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = e.Target
		hdr.Mode = 0o777
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("symlink %q: %w", e.Path, err)
		}
		return nil
	}
	hdr.Typeflag = tar.TypeReg
	if e.Source == "" {
		hdr.Mode = tarMode(orDefault(e.Mode, 0o644))
		hdr.Size = int64(len(e.Data))
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("file %q: %w", e.Path, err)
		}
		if _, err := tw.Write(e.Data); err != nil {
			return fmt.Errorf("file %q: %w", e.Path, err)
		}
		return nil
	}
	f, err := os.Open(e.Source)
	if err != nil {
		return fmt.Errorf("file %q: %w", e.Path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("file %q: %w", e.Path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("file %q: source %s is not a regular file", e.Path, e.Source)
	}
	mode := e.Mode
	if mode == 0 {
		mode = 0o644
		if fi.Mode()&0o111 != 0 {
			mode = 0o755
		}
	}
	hdr.Mode = tarMode(mode)
	hdr.Size = fi.Size()
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("file %q: %w", e.Path, err)
	}
	if _, err := io.CopyN(tw, f, fi.Size()); err != nil {
		return fmt.Errorf("file %q: copy %s: %w", e.Path, e.Source, err)
	}
	return nil
}

// orDefault returns mode, or def when mode is zero.
func orDefault(mode, def fs.FileMode) fs.FileMode {
	if mode == 0 {
		return def
	}
	return mode
}

// ParseTag parses a fully qualified image tag such as
// "registry.k8s.io/pause:3.10": the registry and the tag must be explicit,
// so the name containerd stores is the name written.
func ParseTag(ref string) (name.Tag, error) {
	const want = "want REGISTRY/REPOSITORY:TAG, e.g. registry.k8s.io/pause:3.10"
	if !strings.Contains(ref[strings.LastIndexByte(ref, '/')+1:], ":") {
		return name.Tag{}, fmt.Errorf("tag %q: no tag after the repository (%s)", ref, want)
	}
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return name.Tag{}, fmt.Errorf("tag %q: %w (%s)", ref, err, want)
	}
	return tag, nil
}

// Write writes img as a docker-archive tarball tagged ref to the file dst,
// creating its directory. The file is replaced atomically, so a failed
// write leaves no partial archive behind.
func Write(dst, ref string, img v1.Image) (err error) {
	tag, err := ParseTag(ref)
	if err != nil {
		return err
	}
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(dst)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := tarball.Write(tag, img, f); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return nil
}
