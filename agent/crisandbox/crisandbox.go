// Package crisandbox lists the pod sandboxes of the node's container
// runtime through CRI (k8s.io/cri-api), as kubelet sees them: the runtime's
// own word on which pod networks may still be in use on the node.
package crisandbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/apimachinery/pkg/types"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Defaults of Config.
const (
	DefaultEndpoint = "unix:///run/containerd/containerd.sock"
	DefaultTimeout  = 10 * time.Second
)

// Config configures a Lister.
type Config struct {
	// Endpoint is the runtime's CRI socket: "unix:///path" or an absolute
	// path. Default DefaultEndpoint (containerd); CRI-O's is
	// unix:///var/run/crio/crio.sock.
	Endpoint string
	// Timeout bounds one List. Default 10s.
	Timeout time.Duration
}

// Sandbox is one pod sandbox the runtime has, in any state: a NotReady
// sandbox may still hold its network namespace until the runtime removes
// it.
type Sandbox struct {
	ID     string
	PodUID types.UID
	Ready  bool
}

// Lister lists the runtime's pod sandboxes. The connection is made lazily
// and re-made by gRPC when the runtime restarts.
type Lister struct {
	cfg  Config
	conn *grpc.ClientConn
	rt   runtimeapi.RuntimeServiceClient
}

// New validates cfg and returns a Lister; it does not connect yet.
func New(cfg Config) (*Lister, error) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultEndpoint
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	path, ok := strings.CutPrefix(cfg.Endpoint, "unix://")
	if !ok {
		path = cfg.Endpoint
	}
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("cri endpoint %q: want unix:///absolute/path or an absolute path", cfg.Endpoint)
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("cri endpoint %q: %w", cfg.Endpoint, err)
	}
	return &Lister{cfg: cfg, conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn)}, nil
}

// ErrNoUID is returned when the runtime lists a sandbox without a pod UID:
// its list cannot tell which pods' networks exist, so it must not be used
// to release any.
var ErrNoUID = errors.New("sandbox without a pod UID")

// List returns every pod sandbox the runtime has, within the Lister's
// timeout (and ctx's).
func (l *Lister) List(ctx context.Context) ([]Sandbox, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.Timeout)
	defer cancel()
	resp, err := l.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return nil, fmt.Errorf("cri %s: list pod sandboxes: %w", l.cfg.Endpoint, err)
	}
	out := make([]Sandbox, 0, len(resp.Items))
	for _, s := range resp.Items {
		if s.GetMetadata().GetUid() == "" {
			return nil, fmt.Errorf("cri %s: sandbox %s: %w", l.cfg.Endpoint, s.GetId(), ErrNoUID)
		}
		out = append(out, Sandbox{ID: s.GetId(), PodUID: types.UID(s.GetMetadata().GetUid()), Ready: s.GetState() == runtimeapi.PodSandboxState_SANDBOX_READY})
	}
	return out, nil
}

// Close closes the connection.
func (l *Lister) Close() error { return l.conn.Close() }
