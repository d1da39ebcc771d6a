// Package protocol is what berth-ipam and berth-agent say to each other over
// the agent's unix socket: one JSON request per HTTP POST to /v1/<command>,
// one JSON response. berth-ipam sends HTTP/1.0, one request per
// connection, so the agent's answer is never chunked. Standard library
// only: the CNI binary links it.
package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DefaultSocket is where the agent listens.
const DefaultSocket = "/run/berth/ipam.sock"

// Commands, the path of each request being "/v1/" + command.
const (
	CommandAdd    = "add"
	CommandDel    = "del"
	CommandCheck  = "check"
	CommandGC     = "gc"
	CommandStatus = "status"
	// CommandConflict is sent by berth-netcheck, not berth-ipam: another
	// host answered for Address on the container's interface, so the ADD
	// fails and the agent takes the address out of use (see
	// agent/ipamserver/README.md). An agent older than the command
	// answers HTTP 404.
	CommandConflict = "conflict"
)

// Request is one CNI call, as much of it as the agent needs.
type Request struct {
	ContainerID  string `json:"containerID,omitempty"`
	IfName       string `json:"ifName,omitempty"`
	Netns        string `json:"netns,omitempty"`
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	PodUID       string `json:"podUID,omitempty"`
	// Pools from the CNI configuration (used when neither pod nor namespace
	// names any).
	Pools []string `json:"pools,omitempty"`
	// Network is the CNI configuration's name (ADD, GC): ADD records it on
	// the claims, and GC considers only the claims of its network.
	Network string `json:"network,omitempty"`
	// ValidAttachments (GC only) are the attachments the runtime still has.
	ValidAttachments []Attachment `json:"validAttachments,omitempty"`
	// Address (CONFLICT only) is the address another host answered for,
	// without prefix length.
	Address string `json:"address,omitempty"`
	// MAC (CONFLICT only) is the link-layer address that answered; empty
	// when only the kernel's IPv6 duplicate address detection saw it.
	MAC string `json:"mac,omitempty"`
}

// Attachment is one container's interface, as CNI GC lists them.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// Response answers a Request: addresses (ADD, CHECK) or an error.
type Response struct {
	IPs    []IP    `json:"ips,omitempty"`
	Routes []Route `json:"routes,omitempty"`
	Error  *Error  `json:"error,omitempty"`
}

// IP is one address with its prefix length, and its gateway.
type IP struct {
	Address string `json:"address"` // CIDR notation: 10.244.0.5/24
	Gateway string `json:"gateway,omitempty"`
	Pool    string `json:"pool,omitempty"`
}

// Route is a route for the pod.
type Route struct {
	Dst string `json:"dst"`
	GW  string `json:"gw,omitempty"`
}

// Error is a CNI error: Code is a CNI error code (11: try again later,
// 7: invalid configuration, 999: internal).
type Error struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

// CNI error codes used.
const (
	CodeInvalidConfig uint = 7
	CodeTryAgainLater uint = 11
	CodeInternal      uint = 999
)

func (e *Error) Error() string {
	if e.Details != "" {
		return e.Msg + ": " + e.Details
	}
	return e.Msg
}

// Decode reads one JSON value strictly: unknown fields and trailing data
// are errors.
func Decode(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return fmt.Errorf("trailing data after the JSON value")
	}
	return nil
}

// Enqueue records a DEL in dir for the agent to run: berth-ipam does when
// the agent is down, the agent when it answers a DEL before releasing its
// claims. The agent runs every record left there when it starts.
func Enqueue(dir string, req *Request) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	data, err := json.Marshal(req)
	if err != nil {
		return err
	}
	name := QueueFile(dir, req)
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

// QueueFile is where Enqueue records req in dir.
func QueueFile(dir string, req *Request) string {
	return filepath.Join(dir, FileName(req.ContainerID, req.IfName))
}

// FileName names a file about a container's interface (its queued DEL,
// the agent's attachment record): one path element, whatever the ID.
func FileName(containerID, ifName string) string {
	return strings.NewReplacer("/", "_", ".", "_").Replace(containerID+"-"+ifName) + ".json"
}
