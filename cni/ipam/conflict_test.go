package ipam

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/berth-io/berth/cni/ipam/protocol"
)

// TestReportConflict against stand-ins of berth-agent (the agent's own
// handling is tested in agent/ipamserver): the request as the agent reads
// it, and each way the agent may not take it.
func TestReportConflict(t *testing.T) {
	var got protocol.Request
	fakeAgent := http.NewServeMux()
	fakeAgent.HandleFunc("POST /v1/conflict", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got = protocol.Request{}
		if err := protocol.Decode(body, &got); err != nil {
			t.Errorf("fake agent: decode %s: %v", body, err)
		}
		resp := protocol.Response{}
		if got.Address == "10.0.0.9" {
			resp.Error = &protocol.Error{Code: protocol.CodeInternal, Msg: "berth-ipam CONFLICT failed", Details: "no claim of the container holds the address"}
		}
		_ = json.NewEncoder(w).Encode(resp)
	})
	// An agent older than CONFLICT serves the other commands only.
	fakeOlderAgent := http.NewServeMux()
	fakeOlderAgent.HandleFunc("POST /v1/add", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("{}")) })
	agent, older := serve(t, fakeAgent), serve(t, fakeOlderAgent)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := &protocol.Request{ContainerID: "c1", IfName: "eth0", Address: "10.0.0.5", MAC: "02:00:00:00:00:07"}
	if err := ReportConflict(ctx, agent, req); err != nil {
		t.Fatalf("ReportConflict: %v", err)
	}
	if !reflect.DeepEqual(got, *req) {
		t.Errorf("the agent read %+v, want %+v", got, *req)
	}
	missing := filepath.Join(t.TempDir(), "none.sock")
	for _, tc := range []struct {
		name, socket, addr, want string
	}{
		{"agent error", agent, "10.0.0.9", "berth-agent at " + agent + ": berth-ipam CONFLICT failed: no claim of the container holds the address"},
		{"older agent", older, "10.0.0.5", "berth-agent at " + older + " does not know CONFLICT (HTTP 404): it is older than berth-netcheck"},
		{"no agent", missing, "10.0.0.5", "berth-agent is not reachable at " + missing + ": dial unix " + missing + ": connect: no such file or directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := *req
			r.Address = tc.addr
			if err := ReportConflict(ctx, tc.socket, &r); err == nil || err.Error() != tc.want {
				t.Fatalf("ReportConflict = %v, want %s", err, tc.want)
			}
		})
	}
}
