package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/berth-io/berth/agent/cniinstall"
)

// runInstallCNI is `berth-agent install-cni --from DIR --to DIR NAME...`,
// the DaemonSet's init container: it copies Berth's CNI plugins into the
// host's CNI bin directory (the image has no cp). Exit codes as run's.
func runInstallCNI(args []string, stdout, stderr io.Writer) int {
	var cfg cniinstall.Config
	fs := flag.NewFlagSet("berth-agent install-cni", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: berth-agent install-cni --from DIR --to DIR NAME...")
		fmt.Fprintln(stderr, "Copies each named CNI plugin binary from --from into --to, atomically, mode 0755.")
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.From, "from", "/usr/local/bin", "directory holding the binaries")
	fs.StringVar(&cfg.To, "to", "/host/opt/cni/bin", "the host's CNI bin directory, mounted")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cfg.Names = fs.Args()
	installed, err := cniinstall.Install(cfg)
	for _, in := range installed {
		state := "installed"
		if !in.Changed {
			state = "up to date"
		}
		fmt.Fprintf(stdout, "%s: %s\n", in.Path, state)
	}
	if errors.Is(err, cniinstall.ErrInvalid) {
		fmt.Fprintf(stderr, "berth-agent install-cni: %v\n", err)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "berth-agent install-cni: %v\n", err)
		return 1
	}
	return 0
}
