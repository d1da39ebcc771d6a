package imagebuild

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

const testTag = "berth.local/test:1.0"

// writeSource writes a host file for an entry to copy.
func writeSource(t *testing.T, name, content string, perm fs.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	// WriteFile's perm is subject to the umask.
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
	return p
}

// layerFile is one entry of a layer as read back.
type layerFile struct {
	typ      byte
	mode     int64
	linkname string
	content  string
}

// readImage loads the archive at p with its tag and returns the image and
// the entries of its single layer by name, in the order written.
func readImage(t *testing.T, p string) (v1.Image, map[string]layerFile, []string) {
	t.Helper()
	tag, err := ParseTag(testTag)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(p, &tag)
	if err != nil {
		t.Fatalf("load %s as %s: %v", p, testTag, err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("image has %d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := make(map[string]layerFile)
	var order []string
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !hdr.ModTime.Equal(Epoch) || hdr.Uid != 0 || hdr.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d, want %v 0 0", hdr.Name, hdr.ModTime, hdr.Uid, hdr.Gid, Epoch)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[hdr.Name] = layerFile{typ: hdr.Typeflag, mode: hdr.Mode, linkname: hdr.Linkname, content: string(b)}
		order = append(order, hdr.Name)
	}
	return img, files, order
}

func TestBuild_Write(t *testing.T) {
	pause := writeSource(t, "pause", "#!pause", 0o755)
	conf := writeSource(t, "app.conf", "key=value\n", 0o640)
	agent := writeSource(t, "agent", "agent-binary", 0o700)
	entries := []Entry{
		FileFrom("/pause", pause, 0),
		FileFrom("/etc/app.conf", conf, 0),
		FileFrom("/usr/local/bin/agent", agent, fs.ModeSetuid|0o755),
		FileData("/etc/motd", []byte("hi\n"), 0),
		Link("/bin/sh", "busybox"),
		Directory("/data", 0o750),
	}
	cfg := Config{
		Entrypoint: []string{"/pause"},
		Cmd:        []string{"-v"},
		Env:        []string{"LANG=C.UTF-8"},
		WorkingDir: "/srv/app",
		User:       "65534:65534",
		Labels:     map[string]string{"org.opencontainers.image.title": "test"},
	}
	img, err := Build(entries, cfg)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "images", "test.tar")
	if err := Write(out, testTag, img); err != nil {
		t.Fatal(err)
	}

	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(out) })
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{testTag}) {
		t.Fatalf("manifest.json = %+v, want one image tagged %s", m, testTag)
	}

	loaded, files, order := readImage(t, out)
	cf, err := loaded.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	wantConfig := v1.Config{
		Entrypoint: []string{"/pause"},
		Cmd:        []string{"-v"},
		Env:        []string{DefaultPath, "LANG=C.UTF-8"},
		WorkingDir: "/srv/app",
		User:       "65534:65534",
		Labels:     map[string]string{"org.opencontainers.image.title": "test"},
	}
	if !reflect.DeepEqual(cf.Config, wantConfig) {
		t.Errorf("config = %+v\nwant %+v", cf.Config, wantConfig)
	}
	if got, want := mustDigest(t, loaded), mustDigest(t, img); got != want {
		t.Errorf("loaded digest %s, built %s", got, want)
	}

	want := map[string]layerFile{
		"pause":               {typ: tar.TypeReg, mode: 0o755, content: "#!pause"},
		"etc/app.conf":        {typ: tar.TypeReg, mode: 0o644, content: "key=value\n"},
		"usr/":                {typ: tar.TypeDir, mode: 0o755},
		"usr/local/":          {typ: tar.TypeDir, mode: 0o755},
		"usr/local/bin/":      {typ: tar.TypeDir, mode: 0o755},
		"usr/local/bin/agent": {typ: tar.TypeReg, mode: 0o4755, content: "agent-binary"},
		"etc/motd":            {typ: tar.TypeReg, mode: 0o644, content: "hi\n"},
		"bin/":                {typ: tar.TypeDir, mode: 0o755},
		"bin/sh":              {typ: tar.TypeSymlink, mode: 0o777, linkname: "busybox"},
		"data/":               {typ: tar.TypeDir, mode: 0o750},
		"srv/":                {typ: tar.TypeDir, mode: 0o755},
		"srv/app/":            {typ: tar.TypeDir, mode: 0o755},
		"tmp/":                {typ: tar.TypeDir, mode: 0o1777},
		"proc/":               {typ: tar.TypeDir, mode: 0o555},
		"sys/":                {typ: tar.TypeDir, mode: 0o555},
		"dev/":                {typ: tar.TypeDir, mode: 0o755},
		"etc/":                {typ: tar.TypeDir, mode: 0o755},
		"var/":                {typ: tar.TypeDir, mode: 0o755},
		"run/":                {typ: tar.TypeDir, mode: 0o755},
		"root/":               {typ: tar.TypeDir, mode: 0o700},
		"etc/nsswitch.conf":   {typ: tar.TypeReg, mode: 0o644, content: "hosts: files dns\n"},
		"etc/passwd":          {typ: tar.TypeReg, mode: 0o644, content: "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
		"etc/group":           {typ: tar.TypeReg, mode: 0o644, content: "root:x:0:\nnobody:x:65534:\n"},
	}
	for name, w := range want {
		if got, ok := files[name]; !ok {
			t.Errorf("layer has no %s", name)
		} else if got != w {
			t.Errorf("layer %s = %+v, want %+v", name, got, w)
		}
	}
	for name := range files {
		if _, ok := want[name]; !ok {
			t.Errorf("layer has unexpected %s", name)
		}
	}
	if !slices.IsSorted(order) {
		t.Errorf("layer entries are not sorted: %q", order)
	}
}

func mustDigest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestBuild_Deterministic(t *testing.T) {
	bin := writeSource(t, "bin", strings.Repeat("static binary ", 1000), 0o755)
	entries := []Entry{
		FileFrom("/usr/bin/tool", bin, 0),
		Link("/bin/tool", "../usr/bin/tool"),
		Directory("/data", 0o700),
	}
	cfg := Config{
		Entrypoint: []string{"/bin/tool"},
		Env:        []string{"A=1", "B=2"},
		Labels:     map[string]string{"b": "2", "a": "1", "c": "3"},
	}
	build := func(entries []Entry) (v1.Hash, []byte) {
		t.Helper()
		img, err := Build(entries, cfg)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "img.tar")
		if err := Write(out, testTag, img); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return mustDigest(t, img), b
	}
	d1, b1 := build(entries)
	d2, b2 := build(entries)
	if d1 != d2 {
		t.Errorf("same inputs, digests %s and %s", d1, d2)
	}
	if !bytes.Equal(b1, b2) {
		t.Error("same inputs, archives differ")
	}
	reversed := slices.Clone(entries)
	slices.Reverse(reversed)
	if d3, _ := build(reversed); d3 != d1 {
		t.Errorf("entries in another order, digest %s, want %s", d3, d1)
	}

	// A changed input changes the digest.
	if err := os.WriteFile(bin, []byte("another binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	if d4, _ := build(entries); d4 == d1 {
		t.Errorf("changed source, digest still %s", d4)
	}
}

func TestBuild_OverridesBase(t *testing.T) {
	img, err := Build([]Entry{
		FileData("/etc/passwd", []byte("app:x:1000:1000::/:/bin/false\n"), 0o600),
		Directory("/tmp", 0o700),
	}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "img.tar")
	if err := Write(out, testTag, img); err != nil {
		t.Fatal(err)
	}
	_, files, _ := readImage(t, out)
	if got := files["etc/passwd"]; got.mode != 0o600 || got.content != "app:x:1000:1000::/:/bin/false\n" {
		t.Errorf("etc/passwd = %+v, want the entry of the build", got)
	}
	if got := files["tmp/"]; got.mode != 0o700 {
		t.Errorf("tmp/ mode %o, want 700", got.mode)
	}
}

func TestBuild_Errors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name    string
		entries []Entry
		cfg     Config
		want    string
	}{
		{
			name:    "missing source file",
			entries: []Entry{FileFrom("/pause", missing, 0)},
			want:    `file "/pause": open ` + missing + `: no such file or directory`,
		},
		{
			name:    "source is a directory",
			entries: []Entry{FileFrom("/pause", dir, 0)},
			want:    `file "/pause": source ` + dir + ` is not a regular file`,
		},
		{
			name:    "relative path",
			entries: []Entry{FileData("pause", nil, 0)},
			want:    `entry "pause": path must be absolute`,
		},
		{
			name:    "unclean path",
			entries: []Entry{FileData("/bin/../pause", nil, 0)},
			want:    `entry "/bin/../pause": path is not clean, use "/pause"`,
		},
		{
			name:    "root",
			entries: []Entry{Directory("/", 0)},
			want:    `entry "/": the root directory cannot be an entry`,
		},
		{
			name:    "duplicate path",
			entries: []Entry{Link("/bin/sh", "busybox"), FileData("/bin/sh", nil, 0)},
			want:    `entry "/bin/sh": duplicate path`,
		},
		{
			name:    "parent is a symlink",
			entries: []Entry{Link("/bin", "usr/bin"), FileData("/bin/sh", nil, 0)},
			want:    `entry "/bin/sh": parent "/bin" is a symlink, not a directory`,
		},
		{
			name:    "parent is a file",
			entries: []Entry{FileData("/app", nil, 0), FileData("/app/conf", nil, 0)},
			want:    `entry "/app/conf": parent "/app" is a file, not a directory`,
		},
		{
			name:    "symlink without target",
			entries: []Entry{Link("/bin/sh", "")},
			want:    `symlink "/bin/sh": empty target`,
		},
		{
			name:    "symlink with mode",
			entries: []Entry{{Path: "/bin/sh", Kind: Symlink, Target: "busybox", Mode: 0o755}},
			want:    `symlink "/bin/sh": a symlink has no mode`,
		},
		{
			name:    "file with source and data",
			entries: []Entry{{Path: "/x", Kind: File, Source: "/etc/hostname", Data: []byte("x")}},
			want:    `file "/x": has both a source and data`,
		},
		{
			name:    "mode with type bits",
			entries: []Entry{Directory("/x", fs.ModeDir|0o755)},
			want:    `directory "/x": mode 020000000755 has bits other than permissions and fs.ModeSetuid, fs.ModeSetgid, fs.ModeSticky`,
		},
		{
			name:    "unknown kind",
			entries: []Entry{{Path: "/x"}},
			want:    `entry "/x": unknown kind 0`,
		},
		{
			name: "env without equals",
			cfg:  Config{Env: []string{"DEBUG"}},
			want: `env "DEBUG": want KEY=VALUE`,
		},
		{
			name: "env set twice",
			cfg:  Config{Env: []string{"A=1", "A=2"}},
			want: `env "A=2": A is set twice`,
		},
		{
			name: "relative working dir",
			cfg:  Config{WorkingDir: "app"},
			want: `working dir "app": path must be absolute`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(tt.entries, tt.cfg)
			if err == nil || err.Error() != tt.want {
				t.Errorf("Build() error = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestWrite_BadTag(t *testing.T) {
	img, err := Build(nil, Config{})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "img.tar")
	tests := []struct {
		name string
		ref  string
		want string
	}{
		{
			name: "no registry",
			ref:  "busybox:1.36",
			want: `tag "busybox:1.36": strict validation requires the registry to be explicitly defined (want REGISTRY/REPOSITORY:TAG, e.g. registry.k8s.io/pause:3.10)`,
		},
		{
			name: "registry port but no tag",
			ref:  "localhost:5000/pause",
			want: `tag "localhost:5000/pause": no tag after the repository (want REGISTRY/REPOSITORY:TAG, e.g. registry.k8s.io/pause:3.10)`,
		},
		{
			name: "no tag",
			ref:  "registry.k8s.io/pause",
			want: `tag "registry.k8s.io/pause": no tag after the repository (want REGISTRY/REPOSITORY:TAG, e.g. registry.k8s.io/pause:3.10)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Write(out, tt.ref, img)
			if err == nil || err.Error() != tt.want {
				t.Errorf("Write() error = %v, want %q", err, tt.want)
			}
			if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Write with a bad tag left %s: %v", out, err)
			}
		})
	}
}

func TestOverlay(t *testing.T) {
	base := []Entry{Directory("/tmp", 0o1777), FileData("/etc/passwd", []byte("base"), 0), Link("/bin/sh", "busybox")}
	top := []Entry{FileData("/etc/passwd", []byte("top"), 0), FileData("/bin/tool", nil, 0)}
	got := Overlay(base, top)
	want := []Entry{base[0], base[2], top[0], top[1]}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Overlay() = %+v\nwant %+v", got, want)
	}
}
