package ipam

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// maxResponse bounds the agent's answer.
const maxResponse = 1 << 20

// post sends body to the agent as one HTTP/1.0 POST of path on a new
// connection to socket, and returns the response's status code and body.
// An error is an *unreachableError: the agent could not be asked, or did
// not answer.
//
// berth-ipam runs once per CNI call, so what it links is paid on every pod
// start: net/http would bring TLS, x509 and HTTP/2 (twice the binary,
// and their package initialization) for one request on a unix socket. An
// HTTP/1.0 request is answered without chunking, the body delimited by
// Content-Length or by the server closing the connection; the agent serves
// it with net/http.
func post(ctx context.Context, socket, path string, body []byte) (int, []byte, error) {
	code, data, err := exchange(ctx, socket, path, body)
	if err != nil {
		cerr := ctx.Err()
		if d, ok := ctx.Deadline(); ok && cerr == nil && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(d) {
			// The connection's deadline (the context's) fired before the
			// context's own timer did.
			cerr = context.DeadlineExceeded
		}
		if cerr != nil && !errors.Is(err, cerr) {
			err = fmt.Errorf("%w: %w", cerr, err)
		}
		return 0, nil, &unreachableError{socket: socket, err: err}
	}
	return code, data, nil
}

func exchange(ctx context.Context, socket, path string, body []byte) (int, []byte, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, "unix", socket)
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(d); err != nil {
			return 0, nil, err
		}
	}
	// A cancelled context interrupts the exchange, as its deadline does.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	req := make([]byte, 0, 128+len(body))
	req = fmt.Appendf(req, "POST %s HTTP/1.0\r\nHost: berth-agent\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", path, len(body))
	req = append(req, body...)
	if _, err := conn.Write(req); err != nil {
		return 0, nil, err
	}
	return readResponse(bufio.NewReader(conn))
}

// readResponse reads an HTTP/1.x response: status line, header, and the
// body up to Content-Length or, without one, to the end of the stream.
func readResponse(r *bufio.Reader) (int, []byte, error) {
	line, err := readLine(r)
	if err != nil {
		return 0, nil, fmt.Errorf("read status line: %w", err)
	}
	proto, rest, _ := strings.Cut(line, " ")
	codeStr, _, _ := strings.Cut(rest, " ")
	code, err := strconv.Atoi(codeStr)
	if !strings.HasPrefix(proto, "HTTP/1.") || err != nil || code < 100 || code > 999 {
		return 0, nil, fmt.Errorf("malformed status line %q", line)
	}
	length := -1
	for {
		line, err := readLine(r)
		if err != nil {
			return 0, nil, fmt.Errorf("read header: %w", err)
		}
		if line == "" {
			break
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return 0, nil, fmt.Errorf("malformed header line %q", line)
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(name) {
		case "content-length":
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 {
				return 0, nil, fmt.Errorf("malformed Content-Length %q", value)
			}
			length = n
		case "transfer-encoding":
			if !strings.EqualFold(value, "identity") {
				return 0, nil, fmt.Errorf("unexpected Transfer-Encoding %q in an answer to HTTP/1.0", value)
			}
		}
	}
	if length > maxResponse {
		return 0, nil, fmt.Errorf("response of %d bytes: larger than %d", length, maxResponse)
	}
	if length >= 0 {
		body := make([]byte, length)
		if _, err := io.ReadFull(r, body); err != nil {
			return 0, nil, fmt.Errorf("read body: %w", err)
		}
		return code, body, nil
	}
	body, err := io.ReadAll(io.LimitReader(r, maxResponse+1))
	if err != nil {
		return 0, nil, fmt.Errorf("read body: %w", err)
	}
	if len(body) > maxResponse {
		return 0, nil, fmt.Errorf("response larger than %d bytes", maxResponse)
	}
	return code, body, nil
}

// readLine reads one CRLF- (or LF-) terminated line of at most 64 KiB.
func readLine(r *bufio.Reader) (string, error) {
	var line []byte
	for {
		chunk, more, err := r.ReadLine()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		line = append(line, chunk...)
		if len(line) > 64<<10 {
			return "", errors.New("line longer than 64 KiB")
		}
		if !more {
			return string(bytes.TrimRight(line, "\r")), nil
		}
	}
}
