package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	pause := writeFile(t, dir, "pause", "pause-binary")
	busybox := writeFile(t, dir, "busybox", "#!/bin/sh\nprintf 'sh\\nls\\nwget\\n'\n")
	nettool := writeFile(t, dir, "nettool", "nettool-binary")
	out := filepath.Join(dir, "out", "img.tar")
	const ref = "berth.local/busybox:1.36"
	args := []string{
		"-tag", ref, "-o", out,
		"-busybox", busybox,
		"-add", "/bin/nettool=" + nettool,
		"-add", "/pause=" + pause + ":0700",
		"-add", "/bin/wget=" + nettool, // replaces the applet link
		"-symlink", "/usr/bin/env=/bin/busybox",
		"-dir", "/data:0750",
		"-entrypoint", "/bin/sh,-c",
		"-cmd", "sleep 1",
		"-env", "A=1", "-env", "PATH=/bin",
		"-label", "x=y",
		"-workdir", "/data",
		"-user", "65534",
	}
	var stdout bytes.Buffer
	if err := run(context.Background(), args, &stdout); err != nil {
		t.Fatal(err)
	}

	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatal(err)
	}
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	id, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := stdout.String(), ref+" digest "+digest.String()+" id "+id.String()+" -> "+out+"\n"; got != want {
		t.Errorf("printed %q, want %q", got, want)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if !slices.Equal(c.Entrypoint, []string{"/bin/sh", "-c"}) || !slices.Equal(c.Cmd, []string{"sleep 1"}) ||
		!slices.Equal(c.Env, []string{"A=1", "PATH=/bin"}) || c.WorkingDir != "/data" || c.User != "65534" || c.Labels["x"] != "y" {
		t.Errorf("config = %+v", c)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	type file struct {
		typ  byte
		mode int64
		link string
		body string
	}
	got := make(map[string]file)
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		got[hdr.Name] = file{typ: hdr.Typeflag, mode: hdr.Mode, link: hdr.Linkname, body: string(b)}
	}
	for name, want := range map[string]file{
		"bin/busybox":       {typ: tar.TypeReg, mode: 0o755, body: "#!/bin/sh\nprintf 'sh\\nls\\nwget\\n'\n"},
		"bin/sh":            {typ: tar.TypeSymlink, mode: 0o777, link: "busybox"},
		"bin/ls":            {typ: tar.TypeSymlink, mode: 0o777, link: "busybox"},
		"bin/wget":          {typ: tar.TypeReg, mode: 0o755, body: "nettool-binary"},
		"bin/nettool":       {typ: tar.TypeReg, mode: 0o755, body: "nettool-binary"},
		"pause":             {typ: tar.TypeReg, mode: 0o700, body: "pause-binary"},
		"usr/bin/env":       {typ: tar.TypeSymlink, mode: 0o777, link: "/bin/busybox"},
		"data/":             {typ: tar.TypeDir, mode: 0o750},
		"tmp/":              {typ: tar.TypeDir, mode: 0o1777},
		"etc/passwd":        {typ: tar.TypeReg, mode: 0o644, body: "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
		"etc/nsswitch.conf": {typ: tar.TypeReg, mode: 0o644, body: "hosts: files dns\n"},
	} {
		if got[name] != want {
			t.Errorf("%s = %+v, want %+v", name, got[name], want)
		}
	}

	// The same command line gives the same image.
	stdout.Reset()
	out2 := filepath.Join(dir, "out", "img2.tar")
	args2 := slices.Clone(args)
	args2[3] = out2
	if err := run(context.Background(), args2, &stdout); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), " digest "+digest.String()+" ") {
		t.Errorf("second build printed %q, want digest %s", stdout.String(), digest)
	}
}

func TestRun_Help(t *testing.T) {
	var stdout bytes.Buffer
	err := run(context.Background(), []string{"-h"}, &stdout)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run(-h) error = %v, want flag.ErrHelp", err)
	}
	if !strings.HasPrefix(stdout.String(), "Usage: berth-images") || !strings.Contains(stdout.String(), "-busybox") {
		t.Errorf("usage = %q", stdout.String())
	}
}

func TestParseFlags_Errors(t *testing.T) {
	dir := t.TempDir()
	bin := writeFile(t, dir, "bin", "x")
	missing := filepath.Join(dir, "missing")
	base := []string{"-tag", "berth.local/x:1", "-o", filepath.Join(dir, "x.tar")}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "no tag", args: []string{"-o", "x.tar"}, want: "-tag is required, e.g. -tag registry.k8s.io/pause:3.10"},
		{name: "tag without registry", args: []string{"-tag", "pause:3.10", "-o", "x.tar"},
			want: `-tag: tag "pause:3.10": strict validation requires the registry to be explicitly defined (want REGISTRY/REPOSITORY:TAG, e.g. registry.k8s.io/pause:3.10)`},
		{name: "no output", args: []string{"-tag", "berth.local/x:1"}, want: "-o is required, e.g. -o _output/images/pause.tar"},
		{name: "add without equals", args: append(base, "-add", "/pause"),
			want: `-add "/pause": want DST=SRC[:MODE], e.g. -add /pause=_output/bin/pause:0755`},
		{name: "add without dst", args: append(base, "-add", "="+bin),
			want: `-add "=` + bin + `": want DST=SRC[:MODE], e.g. -add /pause=_output/bin/pause:0755`},
		{name: "add relative dst", args: append(base, "-add", "pause="+bin),
			want: `-add "pause=` + bin + `": DST "pause" must be an absolute path in the image`},
		{name: "add unclean dst", args: append(base, "-add", "/bin/="+bin),
			want: `-add "/bin/=` + bin + `": DST "/bin/" is not clean, use "/bin"`},
		{name: "add empty src", args: append(base, "-add", "/pause=:0755"),
			want: `-add "/pause=:0755": SRC is empty, want DST=SRC[:MODE]`},
		{name: "add bad mode", args: append(base, "-add", "/pause="+bin+":0999"),
			want: `-add "/pause=` + bin + `:0999": mode "0999": want octal permissions up to 7777, e.g. 0755`},
		{name: "add mode too large", args: append(base, "-add", "/pause="+bin+":17777"),
			want: `-add "/pause=` + bin + `:17777": mode "17777": want octal permissions up to 7777, e.g. 0755`},
		{name: "add missing source", args: append(base, "-add", "/pause="+missing),
			want: `-add "/pause=` + missing + `": source ` + missing + ` does not exist (build it first, or fix the path)`},
		{name: "add directory source", args: append(base, "-add", "/pause="+dir),
			want: `-add "/pause=` + dir + `": source ` + dir + ` is not a regular file`},
		{name: "add twice", args: append(base, "-add", "/pause="+bin, "-symlink", "/pause=x"),
			want: `-symlink "/pause=x": /pause is already given by -add "/pause=` + bin + `"`},
		{name: "symlink without target", args: append(base, "-symlink", "/bin/sh="),
			want: `-symlink "/bin/sh=": want DST=TARGET, e.g. -symlink /bin/sh=busybox`},
		{name: "dir bad mode", args: append(base, "-dir", "/data:rwx"),
			want: `-dir "/data:rwx": mode "rwx": want octal permissions up to 7777, e.g. 0755`},
		{name: "missing busybox", args: append(base, "-busybox", missing),
			want: `-busybox "` + missing + `": source ` + missing + ` does not exist (build it first, or fix the path)`},
		{name: "env without equals", args: append(base, "-env", "DEBUG"),
			want: `-env "DEBUG": want KEY=VALUE, e.g. -env LANG=C.UTF-8`},
		{name: "env twice", args: append(base, "-env", "A=1", "-env", "A=2"),
			want: `-env "A=2": A is set twice`},
		{name: "label without equals", args: append(base, "-label", "x"),
			want: `-label "x": want KEY=VALUE`},
		{name: "relative workdir", args: append(base, "-workdir", "app"),
			want: `-workdir "app": "app" must be an absolute path in the image`},
		{name: "unknown flag", args: append(base, "-from", "debian"),
			want: "flag provided but not defined: -from"},
		{name: "positional argument", args: append(base, "extra"),
			want: `unexpected argument "extra": every input is a flag`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags(tt.args, io.Discard)
			if err == nil || err.Error() != tt.want {
				t.Errorf("parseFlags(%q) error = %v\nwant %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	tests := []struct {
		in   string
		want os.FileMode
	}{
		{in: "755", want: 0o755},
		{in: "0644", want: 0o644},
		{in: "1777", want: os.ModeSticky | 0o777},
		{in: "4755", want: os.ModeSetuid | 0o755},
		{in: "2755", want: os.ModeSetgid | 0o755},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseMode(tt.in)
			if err != nil || got != tt.want {
				t.Errorf("parseMode(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
	if _, err := parseMode("0"); err == nil || err.Error() != `mode "0": a mode of 0 is not allowed` {
		t.Errorf("parseMode(0) error = %v", err)
	}
}
