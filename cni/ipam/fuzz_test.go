package ipam

import (
	"bufio"
	"bytes"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/berth-io/berth/cni/ipam/protocol"
)

// FuzzLoadConfig: any network configuration loads or fails without
// panicking; a loaded one has absolute paths, at most two pools and a
// positive timeout.
func FuzzLoadConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"bridge","ipam":{"type":"berth-ipam"}}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","ipam":{"type":"berth-ipam","pools":["a","b"],"timeout":"5s","socket":"/run/x.sock","queueDir":"/run/q"}}`))
	f.Add([]byte(`{"ipam":{"type":"berth-ipam","pools":["a","b","c"]}}`))
	f.Add([]byte(`{"ipam":{"type":"berth-ipam","timeout":"-1s","typo":1}}`))
	f.Add([]byte(`{"ipam":null}`))
	f.Fuzz(func(t *testing.T, stdin []byte) {
		_, c, err := LoadConfig(stdin)
		if err != nil {
			return
		}
		if !filepath.IsAbs(c.Socket) || !filepath.IsAbs(c.QueueDir) || len(c.Pools) > 2 || c.timeout <= 0 {
			t.Fatalf("%s: loaded %+v", stdin, c)
		}
	})
}

// FuzzReadResponse: the hand-written HTTP/1.x response reader never
// panics, and never returns more body than the response held.
func FuzzReadResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"))
	f.Add([]byte("HTTP/1.1 500 Internal Server Error\r\n\r\n{\"error\":{}}"))
	f.Add([]byte("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"))
	f.Add([]byte("HTTP/1.0 200 OK\r\nContent-Length: 99\r\n\r\n{}"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		code, body, err := readResponse(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		if code < 100 || code > 999 || len(body) > len(raw) || len(body) > maxResponse {
			t.Fatalf("%q: code %d, body of %d bytes", raw, code, len(body))
		}
	})
}

// FuzzDecode: the agent's strict decoding of a request never panics, and
// what it accepts encodes and decodes to the same request (as encoded).
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"containerID":"c","ifName":"eth0","podNamespace":"ns","podName":"p","pools":["a"]}`))
	f.Add([]byte(`{"containerID":"c"} {"x":1}`))
	f.Add([]byte(`{"containerID":"c","ifName":"eth0","address":"10.0.0.5","mac":"02:00:00:00:00:07"}`))
	f.Add([]byte(`{"unknown":true}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var req protocol.Request
		if err := protocol.Decode(data, &req); err != nil {
			return
		}
		enc, err := json.Marshal(&req)
		if err != nil {
			t.Fatalf("%q: re-encode: %v", data, err)
		}
		var again protocol.Request
		if err := protocol.Decode(enc, &again); err != nil {
			t.Fatalf("%q: decode of own encoding %s: %v", data, enc, err)
		}
		// Compared encoded: an empty list and none encode alike (omitempty).
		if enc2, err := json.Marshal(&again); err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("%q: %s, after a round trip %s (%v)", data, enc, enc2, err)
		}
	})
}
