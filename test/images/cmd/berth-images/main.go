// Command berth-images assembles a single-layer linux/amd64 image from static
// binaries and writes it as a docker-archive tarball for
// `ctr -n k8s.io images import`. No Docker engine or registry is needed.
//
//	berth-images -tag registry.k8s.io/pause:3.10 -o _output/images/pause.tar \
//	    -add /pause=_output/bin/pause -entrypoint /pause
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path"
	"strconv"
	"strings"
	"syscall"

	"github.com/berth-io/berth/test/images/imagebuild"
)

const usage = `Usage: berth-images -tag REF -o FILE [flags]

Builds a single-layer linux/amd64 image and writes it as a docker-archive
tarball, ready for: ctr -n k8s.io images import FILE

Every image also gets /tmp (1777), /proc, /sys, /dev, /etc, /var, /run,
/root, and /etc/passwd, /etc/group (root, nobody) and /etc/nsswitch.conf,
unless a flag provides the same path.

Examples:
  berth-images -tag registry.k8s.io/pause:3.10 -o _output/images/pause.tar \
      -add /pause=_output/bin/pause -entrypoint /pause
  berth-images -tag berth.local/busybox:1.36 -o _output/images/busybox.tar \
      -busybox /bin/busybox -add /bin/nettool=_output/bin/nettool -entrypoint /bin/sh

Flags:
`

// listFlag collects every value of a repeated flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, " ") }

func (l *listFlag) Set(s string) error {
	*l = append(*l, s)
	return nil
}

// errUsage marks errors in the command line.
var errUsage = errors.New("usage")

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }
func (e *usageError) Is(target error) bool {
	return target == errUsage
}

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		fmt.Fprintf(os.Stderr, "berth-images: %v (see berth-images -h)\n", err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "berth-images: %v\n", err)
		os.Exit(1)
	}
}

// options are the parsed command line.
type options struct {
	tag     string
	out     string
	busybox string
	entries []imagebuild.Entry
	config  imagebuild.Config
}

// parseFlags parses args; on -h it prints the usage to stdout and returns
// flag.ErrHelp.
func parseFlags(args []string, stdout io.Writer) (*options, error) {
	flags := flag.NewFlagSet("berth-images", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	flags.Usage = func() {}
	var (
		o                                    options
		adds, links, dirs, envs, labels      listFlag
		entrypoint, cmd, workdir, user, tagF string
	)
	flags.StringVar(&tagF, "tag", "", "image reference written into the archive, with registry and tag (required), e.g. registry.k8s.io/pause:3.10")
	flags.StringVar(&o.out, "o", "", "output docker-archive `file` (required), e.g. _output/images/pause.tar")
	flags.Var(&adds, "add", "`DST=SRC[:MODE]`: copy host file SRC to DST (absolute in the image); MODE is octal, default 0755 if SRC is executable, else 0644; repeatable")
	flags.Var(&links, "symlink", "`DST=TARGET`: symlink DST in the image to TARGET; repeatable")
	flags.Var(&dirs, "dir", "`DST[:MODE]`: directory DST in the image, default mode 0755; repeatable")
	flags.StringVar(&o.busybox, "busybox", "", "static busybox `binary` to add as /bin/busybox, with a /bin/<applet> symlink per applet")
	flags.StringVar(&entrypoint, "entrypoint", "", "entrypoint argv, comma-separated, e.g. /bin/sh,-c")
	flags.StringVar(&cmd, "cmd", "", "cmd argv, comma-separated")
	flags.Var(&envs, "env", "environment `KEY=VALUE` (PATH defaults to the usual dirs); repeatable")
	flags.Var(&labels, "label", "image label `KEY=VALUE`; repeatable")
	flags.StringVar(&workdir, "workdir", "", "working directory, absolute; created if missing")
	flags.StringVar(&user, "user", "", "user (name or uid[:gid]) the process runs as")
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			flags.SetOutput(stdout)
			flags.PrintDefaults()
			return nil, err
		}
		return nil, usagef("%v", err)
	}
	if flags.NArg() > 0 {
		return nil, usagef("unexpected argument %q: every input is a flag", flags.Arg(0))
	}
	if tagF == "" {
		return nil, usagef("-tag is required, e.g. -tag registry.k8s.io/pause:3.10")
	}
	if _, err := imagebuild.ParseTag(tagF); err != nil {
		return nil, usagef("-tag: %v", err)
	}
	o.tag = tagF
	if o.out == "" {
		return nil, usagef("-o is required, e.g. -o _output/images/pause.tar")
	}

	seen := make(map[string]string)
	addEntry := func(flagArg string, e imagebuild.Entry) error {
		if prev, ok := seen[e.Path]; ok {
			return usagef("%s: %s is already given by %s", flagArg, e.Path, prev)
		}
		seen[e.Path] = flagArg
		o.entries = append(o.entries, e)
		return nil
	}
	for _, a := range adds {
		e, err := parseAdd(a)
		if err != nil {
			return nil, err
		}
		if err := addEntry(fmt.Sprintf("-add %q", a), e); err != nil {
			return nil, err
		}
	}
	for _, s := range links {
		e, err := parseSymlink(s)
		if err != nil {
			return nil, err
		}
		if err := addEntry(fmt.Sprintf("-symlink %q", s), e); err != nil {
			return nil, err
		}
	}
	for _, d := range dirs {
		e, err := parseDir(d)
		if err != nil {
			return nil, err
		}
		if err := addEntry(fmt.Sprintf("-dir %q", d), e); err != nil {
			return nil, err
		}
	}
	if o.busybox != "" {
		if err := checkSource(fmt.Sprintf("-busybox %q", o.busybox), o.busybox); err != nil {
			return nil, err
		}
	}

	o.config.Entrypoint = splitArgv(entrypoint)
	o.config.Cmd = splitArgv(cmd)
	o.config.User = user
	if workdir != "" {
		if err := checkImagePath(workdir); err != nil {
			return nil, usagef("-workdir %q: %v", workdir, err)
		}
		o.config.WorkingDir = workdir
	}
	envSeen := make(map[string]bool)
	for _, kv := range envs {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usagef("-env %q: want KEY=VALUE, e.g. -env LANG=C.UTF-8", kv)
		}
		if envSeen[k] {
			return nil, usagef("-env %q: %s is set twice", kv, k)
		}
		envSeen[k] = true
		o.config.Env = append(o.config.Env, kv)
	}
	for _, kv := range labels {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usagef("-label %q: want KEY=VALUE", kv)
		}
		if o.config.Labels == nil {
			o.config.Labels = make(map[string]string)
		}
		if _, dup := o.config.Labels[k]; dup {
			return nil, usagef("-label %q: %s is set twice", kv, k)
		}
		o.config.Labels[k] = v
	}
	return &o, nil
}

// parseAdd parses DST=SRC[:MODE]. A suffix of digits after the last colon
// is the mode; a source path ending that way cannot be given.
func parseAdd(s string) (imagebuild.Entry, error) {
	dst, src, ok := strings.Cut(s, "=")
	if !ok || dst == "" {
		return imagebuild.Entry{}, usagef("-add %q: want DST=SRC[:MODE], e.g. -add /pause=_output/bin/pause:0755", s)
	}
	if err := checkImagePath(dst); err != nil {
		return imagebuild.Entry{}, usagef("-add %q: DST %v", s, err)
	}
	var mode fs.FileMode
	if i := strings.LastIndexByte(src, ':'); i >= 0 && isDigits(src[i+1:]) {
		m, err := parseMode(src[i+1:])
		if err != nil {
			return imagebuild.Entry{}, usagef("-add %q: %v", s, err)
		}
		src, mode = src[:i], m
	}
	if src == "" {
		return imagebuild.Entry{}, usagef("-add %q: SRC is empty, want DST=SRC[:MODE]", s)
	}
	if err := checkSource(fmt.Sprintf("-add %q", s), src); err != nil {
		return imagebuild.Entry{}, err
	}
	return imagebuild.FileFrom(dst, src, mode), nil
}

// parseSymlink parses DST=TARGET.
func parseSymlink(s string) (imagebuild.Entry, error) {
	dst, target, ok := strings.Cut(s, "=")
	if !ok || dst == "" || target == "" {
		return imagebuild.Entry{}, usagef("-symlink %q: want DST=TARGET, e.g. -symlink /bin/sh=busybox", s)
	}
	if err := checkImagePath(dst); err != nil {
		return imagebuild.Entry{}, usagef("-symlink %q: DST %v", s, err)
	}
	return imagebuild.Link(dst, target), nil
}

// parseDir parses DST[:MODE].
func parseDir(s string) (imagebuild.Entry, error) {
	dst := s
	var mode fs.FileMode
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		m, err := parseMode(s[i+1:])
		if err != nil {
			return imagebuild.Entry{}, usagef("-dir %q: %v", s, err)
		}
		dst, mode = s[:i], m
	}
	if err := checkImagePath(dst); err != nil {
		return imagebuild.Entry{}, usagef("-dir %q: %v", s, err)
	}
	return imagebuild.Directory(dst, mode), nil
}

// parseMode parses an octal mode such as 755, 0644 or 1777.
func parseMode(s string) (fs.FileMode, error) {
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o7777 || s == "" {
		return 0, fmt.Errorf("mode %q: want octal permissions up to 7777, e.g. 0755", s)
	}
	mode := fs.FileMode(n & 0o777)
	if n&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if n&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if n&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	if mode == 0 {
		return 0, fmt.Errorf("mode %q: a mode of 0 is not allowed", s)
	}
	return mode, nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// checkImagePath checks that p is an absolute, clean path in the image.
func checkImagePath(p string) error {
	switch {
	case !path.IsAbs(p):
		return fmt.Errorf("%q must be an absolute path in the image", p)
	case path.Clean(p) != p:
		return fmt.Errorf("%q is not clean, use %q", p, path.Clean(p))
	case p == "/":
		return errors.New(`"/" cannot be replaced`)
	}
	return nil
}

// checkSource checks that the host file src exists and is a regular file.
func checkSource(flagArg, src string) error {
	fi, err := os.Stat(src)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s: source %s does not exist (build it first, or fix the path)", flagArg, src)
	case err != nil:
		return fmt.Errorf("%s: %w", flagArg, err)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s: source %s is not a regular file", flagArg, src)
	}
	return nil
}

// splitArgv splits a comma-separated argv; the empty string is no argv.
func splitArgv(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	o, err := parseFlags(args, stdout)
	if err != nil {
		return err
	}
	entries := o.entries
	if o.busybox != "" {
		bb, err := imagebuild.BusyboxEntries(ctx, o.busybox)
		if err != nil {
			return fmt.Errorf("-busybox %q: %w", o.busybox, err)
		}
		// Flags replace applet links of the same path.
		entries = imagebuild.Overlay(bb, entries)
	}
	img, err := imagebuild.Build(entries, o.config)
	if err != nil {
		return fmt.Errorf("build %s: %w", o.tag, err)
	}
	if err := imagebuild.Write(o.out, o.tag, img); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("digest: %w", err)
	}
	id, err := img.ConfigName()
	if err != nil {
		return fmt.Errorf("image id: %w", err)
	}
	fmt.Fprintf(stdout, "%s digest %s id %s -> %s\n", o.tag, digest, id, o.out)
	return nil
}
