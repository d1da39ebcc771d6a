package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/berth-io/berth/test/lockedbuf"
)

// startServe runs `nettool serve` on an ephemeral loopback port until the
// test ends and returns its address.
func startServe(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out lockedbuf.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"serve", "-listen", "127.0.0.1:0"}, args...), &out)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("serve did not stop within 10s of its context")
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if addr, ok := strings.CutPrefix(strings.TrimSpace(out.String()), "listening on "); ok {
			return addr
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited early: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not listen within 10s; output %q", out.String())
		}
	}
}

func runOut(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), args, &out)
	return out.String(), err
}

func TestServe_Get(t *testing.T) {
	addr := startServe(t, "-text", "hello")
	tests := []struct {
		name    string
		path    string
		want    string
		wantErr string
	}{
		{name: "root answers the text", path: "/", want: "hello"},
		{name: "healthz", path: "/healthz", want: "ok"},
		{name: "unknown path is an error", path: "/nope", wantErr: "get http://" + addr + "/nope: status 404 Not Found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := runOut(t, "get", "-timeout", "5s", "http://"+addr+tt.path)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("get error = %v, want %q", err, tt.wantErr)
				}
				if got != "" {
					t.Errorf("get printed %q on error, want nothing", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("get printed %q, want %q", got, tt.want)
			}
		})
	}
}

func TestServe_DefaultTextIsHostname(t *testing.T) {
	addr := startServe(t)
	got, err := runOut(t, "get", "http://"+addr+"/")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("GET / = %q, want the hostname %q", got, want)
	}
}

func TestGet_Timeout(t *testing.T) {
	// Accepts connections but never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	start := time.Now()
	_, err = runOut(t, "get", "-timeout", "200ms", "http://"+ln.Addr().String()+"/")
	if err == nil || !strings.Contains(err.Error(), "context deadline exceeded") {
		t.Fatalf("get of a silent server: error %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("get took %v with -timeout 200ms", d)
	}
}

func TestTCP(t *testing.T) {
	addr := startServe(t)
	got, err := runOut(t, "tcp", "-timeout", "5s", addr)
	if err != nil {
		t.Fatal(err)
	}
	if want := "connected to " + addr + "\n"; got != want {
		t.Errorf("tcp printed %q, want %q", got, want)
	}

	// A port nobody listens on: take one and close it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	_, err = runOut(t, "tcp", "-timeout", "5s", closed)
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("tcp to closed port %s: error %v, want connection refused", closed, err)
	}
}

func TestLookup(t *testing.T) {
	got, err := runOut(t, "lookup", "-timeout", "5s", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	found := false
	for _, l := range lines {
		if net.ParseIP(l) == nil {
			t.Errorf("lookup printed %q, not an address", l)
		}
		if ip := net.ParseIP(l); ip != nil && ip.IsLoopback() {
			found = true
		}
	}
	if !found {
		t.Errorf("lookup localhost printed %q, want a loopback address", got)
	}
}

func TestRun_Errors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "no command", args: nil, want: "missing command: serve, get, lookup or tcp (see nettool -h)"},
		{name: "unknown command", args: []string{"ping"}, want: `unknown command "ping": want serve, get, lookup or tcp`},
		{name: "get without url", args: []string{"get"}, want: "get: missing URL"},
		{name: "lookup with two names", args: []string{"lookup", "a", "b"}, want: `lookup: unexpected argument "b" (flags go before NAME)`},
		{name: "unknown flag", args: []string{"tcp", "-x", "a:1"}, want: "tcp: flag provided but not defined: -x"},
		{name: "bad timeout", args: []string{"tcp", "-timeout", "soon", "a:1"}, want: `tcp: invalid value "soon" for flag -timeout: parse error`},
		{name: "zero timeout", args: []string{"get", "-timeout", "0s", "http://a/"}, want: "get: -timeout 0s must be positive"},
		{name: "serve with argument", args: []string{"serve", "extra"}, want: `serve: unexpected argument "extra", it takes only flags`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runOut(t, tt.args...)
			if err == nil || err.Error() != tt.want {
				t.Errorf("run(%q) error = %v, want %q", tt.args, err, tt.want)
			}
		})
	}
}
