// Command nettool is the network helper of the busybox test image
// (/bin/nettool). Debian's busybox-static wget and nslookup crash on static
// glibc NSS, so tests use this static Go binary instead. Each subcommand
// exits 0 on success and 1 with a one-line message on stderr otherwise:
//
//	nettool serve  [-listen :8080] [-text TEXT]   HTTP: GET / answers TEXT (default: the hostname), /healthz 200
//	nettool get    [-timeout 5s] URL              GET URL, print the body; non-2xx is an error
//	nettool lookup [-timeout 5s] NAME             resolve NAME (pure-Go resolver, /etc/resolv.conf), one address per line
//	nettool tcp    [-timeout 5s] HOST:PORT        connect and close
//
// Build it static: CGO_ENABLED=0 go build ./test/images/nettool.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const usage = `usage: nettool COMMAND [flags] [ARG]
  serve  [-listen :8080] [-text TEXT]   HTTP server: GET / answers TEXT (default: the hostname), GET /healthz 200
  get    [-timeout 5s] URL              HTTP GET, prints the body; a non-2xx status is an error
  lookup [-timeout 5s] NAME             resolves NAME with the pure-Go resolver, one address per line
  tcp    [-timeout 5s] HOST:PORT        opens a TCP connection and closes it
Exit status 0 on success, 1 with a one-line message on stderr otherwise.
`

// shutdownTimeout bounds the graceful stop of serve.
const shutdownTimeout = 5 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		fmt.Print(usage)
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nettool: %v\n", err)
		os.Exit(1)
	}
}

// run runs the subcommand in args, writing its output to stdout. serve runs
// until ctx is done.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("missing command: serve, get, lookup or tcp (see nettool -h)")
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "-h", "-help", "--help", "help":
		return flag.ErrHelp
	case "serve":
		flags := newFlagSet(cmd)
		listen := flags.String("listen", ":8080", "address to listen on")
		text := flags.String("text", "", "body of GET / (default: the hostname)")
		if err := parse(flags, args, 0, ""); err != nil {
			return err
		}
		return serve(ctx, *listen, *text, stdout)
	case "get", "lookup", "tcp":
		flags := newFlagSet(cmd)
		timeout := flags.Duration("timeout", 5*time.Second, "bound of the whole operation")
		argName := map[string]string{"get": "URL", "lookup": "NAME", "tcp": "HOST:PORT"}[cmd]
		if err := parse(flags, args, 1, argName); err != nil {
			return err
		}
		if *timeout <= 0 {
			return fmt.Errorf("%s: -timeout %v must be positive", cmd, *timeout)
		}
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		arg := flags.Arg(0)
		switch cmd {
		case "get":
			return get(ctx, arg, stdout)
		case "lookup":
			return lookup(ctx, arg, stdout)
		default:
			return dialTCP(ctx, arg, stdout)
		}
	}
	return fmt.Errorf("unknown command %q: want serve, get, lookup or tcp", cmd)
}

func newFlagSet(cmd string) *flag.FlagSet {
	flags := flag.NewFlagSet(cmd, flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	flags.Usage = func() {}
	return flags
}

// parse parses args and checks that exactly nargs arguments (named argName)
// follow the flags.
func parse(flags *flag.FlagSet, args []string, nargs int, argName string) error {
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%s: %w", flags.Name(), err)
	}
	switch {
	case flags.NArg() < nargs:
		return fmt.Errorf("%s: missing %s", flags.Name(), argName)
	case flags.NArg() > nargs && nargs == 0:
		return fmt.Errorf("%s: unexpected argument %q, it takes only flags", flags.Name(), flags.Arg(0))
	case flags.NArg() > nargs:
		return fmt.Errorf("%s: unexpected argument %q (flags go before %s)", flags.Name(), flags.Arg(nargs), argName)
	}
	return nil
}

// serve answers HTTP on listen until ctx is done. It prints
// "listening on ADDR" once the socket is open.
func serve(ctx context.Context, listen, text string, stdout io.Writer) error {
	if text == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("serve: hostname: %w", err)
		}
		text = h
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, text)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok")
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
	}
	fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// ctx is done: shutting down gets a budget of its own.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("serve: shutdown: %w", err)
	}
	return nil
}

// get prints the body of a GET of url; a status other than 2xx is an error.
func get(ctx context.Context, url string, stdout io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	// No proxy from the environment: the test is about this network path.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("get %s: status %s", url, resp.Status)
	}
	if _, err := io.Copy(stdout, resp.Body); err != nil {
		return fmt.Errorf("get %s: body: %w", url, err)
	}
	return nil
}

// lookup prints the addresses of host, resolved by the pure-Go resolver
// (/etc/hosts per /etc/nsswitch.conf, then the servers of /etc/resolv.conf).
func lookup(ctx context.Context, host string, stdout io.Writer) error {
	r := &net.Resolver{PreferGo: true}
	addrs, err := r.LookupHost(ctx, host)
	if err != nil {
		return fmt.Errorf("lookup: %w", err)
	}
	for _, a := range addrs {
		fmt.Fprintln(stdout, a)
	}
	return nil
}

// dialTCP opens a TCP connection to addr and closes it.
func dialTCP(ctx context.Context, addr string, stdout io.Writer) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("tcp: %w", err)
	}
	remote := conn.RemoteAddr()
	if err := conn.Close(); err != nil {
		return fmt.Errorf("tcp %s: close: %w", addr, err)
	}
	fmt.Fprintf(stdout, "connected to %s\n", remote)
	return nil
}
