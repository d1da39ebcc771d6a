package netcheck

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-io/berth/cni/ipam/protocol"
)

// fakeAgent is a stand-in for berth-agent's IPAM socket (the agent's own
// handling of CONFLICT is tested in agent/ipamserver against a real API
// server): it records the CONFLICT requests it gets and answers them with
// answer; older serves only the commands that came before CONFLICT, as an
// older agent does; hang never answers.
type fakeAgent struct {
	socket string
	got    chan protocol.Request
}

func newFakeAgent(t *testing.T, older, hang bool) *fakeAgent {
	t.Helper()
	a := &fakeAgent{socket: filepath.Join(t.TempDir(), "ipam.sock"), got: make(chan protocol.Request, 10)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/add", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("{}")) })
	stop := make(chan struct{})
	if !older {
		mux.HandleFunc("POST /v1/conflict", func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			var req protocol.Request
			if err := protocol.Decode(body, &req); err != nil {
				t.Errorf("fake agent: CONFLICT %s: %v", body, err)
			}
			a.got <- req
			if hang {
				<-stop
			}
			_ = json.NewEncoder(w).Encode(protocol.Response{})
		})
	}
	l, err := net.Listen("unix", a.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { close(stop); _ = srv.Close() })
	return a
}

// reports returns the CONFLICT requests the agent got so far.
func (a *fakeAgent) reports() []protocol.Request {
	var out []protocol.Request
	for {
		select {
		case r := <-a.got:
			out = append(out, r)
		default:
			return out
		}
	}
}

// TestAdd_reportsConflict: another host on the pod's link answers for the
// pod's address; ADD tells berth-agent (CONFLICT with the container,
// interface, address and the MAC that answered) and fails with code 120,
// the report's outcome in the error's details. An agent that does not
// take it (older, absent, or slow past the report's deadline) leaves the
// failure as it was, with details that say so. CHECK, and an ADD without
// a conflict, report nothing.
func TestAdd_reportsConflict(t *testing.T) {
	t.Parallel()
	s := newSegment(t)
	s.attach("gw", false, gwAddr...)
	other := s.attach("other", false, "10.1.2.7/24")
	pod := s.attach("pod", false, dual...)
	conf := func(socket string, addrs []string) string {
		return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "berth", "type": "berth-netcheck", "ipamSocket": %q, "prevResult": %s}`,
			socket, prevResult(pod, addrs, gw4))
	}
	wantMsg := "IP 10.1.2.7 on eth0 is already in use by " + other.mac.String()
	addErr := func(t *testing.T, conf string) *types.Error {
		t.Helper()
		_, err := Add(ctx(t), cmdArgs(pod, conf))
		var e *types.Error
		if !errors.As(err, &e) || e.Code != CodeAddressInUse || e.Msg != wantMsg {
			t.Fatalf("Add = %v, want code %d %q", err, CodeAddressInUse, wantMsg)
		}
		return e
	}

	t.Run("the agent takes it", func(t *testing.T) {
		agent := newFakeAgent(t, false, false)
		e := addErr(t, conf(agent.socket, []string{"10.1.2.7/24"}))
		if want := "berth-agent took the address out of use: the pod's next ADD gets another address"; e.Details != want {
			t.Errorf("details %q, want %q", e.Details, want)
		}
		want := protocol.Request{ContainerID: "c1", IfName: "eth0", Address: "10.1.2.7", MAC: other.mac.String()}
		if got := agent.reports(); len(got) != 1 || fmt.Sprint(got[0]) != fmt.Sprint(want) {
			t.Fatalf("the agent got %+v, want one %+v", got, want)
		}
		// CHECK sees the conflict too, but a running pod's address is not
		// the agent's to take away.
		if err := Check(ctx(t), cmdArgs(pod, conf(agent.socket, []string{"10.1.2.7/24"}))); err == nil || err.Error() != wantMsg {
			t.Errorf("Check = %v, want %q", err, wantMsg)
		}
		if _, err := Add(ctx(t), cmdArgs(pod, conf(agent.socket, v4))); err != nil {
			t.Fatalf("Add of a unique address: %v", err)
		}
		if got := agent.reports(); len(got) != 0 {
			t.Errorf("CHECK and an ADD without a conflict reported %+v", got)
		}
	})
	for _, tc := range []struct {
		name        string
		agent       func(t *testing.T) string
		wantDetails string
		maxTime     time.Duration
	}{
		{
			name:        "older agent",
			agent:       func(t *testing.T) string { return newFakeAgent(t, true, false).socket },
			wantDetails: "does not know CONFLICT (HTTP 404): it is older than berth-netcheck",
		},
		{
			name:        "no agent",
			agent:       func(t *testing.T) string { return filepath.Join(t.TempDir(), "none.sock") },
			wantDetails: "connect: no such file or directory",
		},
		{
			name:        "agent past the deadline",
			agent:       func(t *testing.T) string { return newFakeAgent(t, false, true).socket },
			wantDetails: "context deadline exceeded",
			maxTime:     DefaultReportTimeout + 3*time.Second,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			e := addErr(t, conf(tc.agent(t), []string{"10.1.2.7/24"}))
			if !strings.HasPrefix(e.Details, "berth-agent was not told (") || !strings.Contains(e.Details, tc.wantDetails) ||
				!strings.HasSuffix(e.Details, "): the pod's next ADD may get the same address") {
				t.Errorf("details %q, want them to say the agent was not told: %s", e.Details, tc.wantDetails)
			}
			if d := time.Since(start); tc.maxTime > 0 && d > tc.maxTime {
				t.Errorf("Add took %s, want at most %s", d, tc.maxTime)
			}
		})
	}
}
