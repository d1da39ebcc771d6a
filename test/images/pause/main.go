// Command pause is the sandbox (pod infrastructure) process of the local test
// cluster, in the image registry.k8s.io/pause:3.10. It holds the pod's
// namespaces open, reaps the children it inherits as PID 1 of a shared PID
// namespace (on SIGCHLD), and exits 0 on SIGINT or SIGTERM. Build it static:
// CGO_ENABLED=0 go build ./test/images/pause.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is printed by -v, like the upstream pause.
const version = "berth-pause 3.10"

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "-v":
			fmt.Println(version)
			return
		default:
			fmt.Fprintf(os.Stderr, "pause: unknown argument %q, only -v is accepted\n", os.Args[1])
			os.Exit(1)
		}
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	// After Notify: the tests take this line as "signals are handled".
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not PID 1, orphans of the pod are not reaped here")
	}
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "pause: shutting down, got signal %v\n", sig)
		os.Exit(0)
	}
}

// reap waits for every child that has exited, without blocking, and returns
// how many it collected. Signals coalesce, so one SIGCHLD may stand for
// several children.
func reap() int {
	n := 0
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return n
		}
		n++
	}
}
