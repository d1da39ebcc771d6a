package ipam

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestReadResponse(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		code     int
		body     string
		err      string
	}{
		{name: "content-length", in: "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n{}\nextra", code: 200, body: "{}\n"},
		{name: "until close", in: "HTTP/1.0 500 Internal Server Error\r\nContent-Type: application/json\r\n\r\n{\"error\":{}}\n", code: 500, body: "{\"error\":{}}\n"},
		{name: "LF only", in: "HTTP/1.1 200 OK\nContent-Length: 2\n\n{}", code: 200, body: "{}"},
		{name: "identity", in: "HTTP/1.0 200 OK\r\nTransfer-Encoding: identity\r\n\r\n{}", code: 200, body: "{}"},
		{name: "empty", in: "", err: "read status line: unexpected EOF"},
		{name: "not HTTP", in: "SSH-2.0-OpenSSH_9.6\r\n\r\n", err: `malformed status line "SSH-2.0-OpenSSH_9.6"`},
		{name: "bad code", in: "HTTP/1.0 OK\r\n\r\n", err: `malformed status line "HTTP/1.0 OK"`},
		{name: "header without colon", in: "HTTP/1.0 200 OK\r\nbroken\r\n\r\n", err: `malformed header line "broken"`},
		{name: "bad length", in: "HTTP/1.0 200 OK\r\nContent-Length: -1\r\n\r\n", err: `malformed Content-Length "-1"`},
		{name: "chunked", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", err: `unexpected Transfer-Encoding "chunked" in an answer to HTTP/1.0`},
		{name: "short body", in: "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n{}", err: "read body: unexpected EOF"},
		{name: "huge body", in: "HTTP/1.0 200 OK\r\nContent-Length: 1048577\r\n\r\n", err: "response of 1048577 bytes: larger than 1048576"},
		{name: "cut header", in: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n", err: "read header: unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, err := readResponse(bufio.NewReader(strings.NewReader(tc.in)))
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("err = %v, want %s", err, tc.err)
				}
				return
			}
			if err != nil || code != tc.code || string(body) != tc.body {
				t.Fatalf("= %d %q %v, want %d %q", code, body, err, tc.code, tc.body)
			}
		})
	}
}

// serve runs h on a unix socket with net/http, as the agent does.
func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

// TestPost against net/http's server: small answers come with a
// Content-Length, large ones are delimited by the connection's close.
func TestPost(t *testing.T) {
	large := `{"msg":"` + strings.Repeat("x", 100<<10) + `"}`
	sock := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("server: read body: %v", err)
		}
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v1/echo":
			_, _ = w.Write(body)
		case "/v1/large":
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(large))
		default:
			http.NotFound(w, r)
		}
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, body, err := post(ctx, sock, "/v1/echo", []byte(`{"containerID":"c1"}`))
	if err != nil || code != 200 || string(body) != `{"containerID":"c1"}` {
		t.Fatalf("echo: %d %q %v", code, body, err)
	}
	code, body, err = post(ctx, sock, "/v1/large", nil)
	if err != nil || code != 500 || string(body) != large {
		t.Fatalf("large: %d, %d bytes, %v", code, len(body), err)
	}
}

func TestPost_unreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "none.sock")
	_, _, err := post(ctx, sock, "/v1/add", []byte("{}"))
	var u *unreachableError
	if !errors.As(err, &u) || !errors.Is(err, syscall.ENOENT) || !down(err) {
		t.Fatalf("err = %v, want an unreachableError wrapping ENOENT", err)
	}
}

// TestPost_deadline: an agent that accepts but never answers fails the
// call at the caller's deadline.
func TestPost_deadline(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		c, err := l.Accept()
		if err == nil {
			<-done
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		close(done)
		_ = l.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err = post(ctx, sock, "/v1/add", []byte("{}"))
	var u *unreachableError
	if !errors.As(err, &u) || !errors.Is(err, context.DeadlineExceeded) || down(err) {
		t.Fatalf("err = %v, want an unreachableError wrapping the deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("returned after %s", d)
	}
}
