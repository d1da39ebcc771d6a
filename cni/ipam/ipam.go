// Package ipam is berth-ipam, Berth's CNI IPAM plugin: it asks berth-agent
// over a unix socket for the pod's addresses (whose claims live in the
// Kubernetes API) and returns them to the main plugin (bridge, macvlan,
// ipvlan). It keeps no state and never talks to the API server; a DEL that
// finds the agent down is queued in a directory the agent drains when it
// starts, so the address stays claimed until then and is never reused early.
package ipam

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/berth-io/berth/cni/ipam/protocol"
)

// Defaults of Config.
const (
	DefaultTimeout = 30 * time.Second
	// DefaultQueueDir holds DELs made while the agent was down.
	DefaultQueueDir            = "/run/berth/ipam-del-queue"
	errPluginNotAvailable uint = 50
)

// Config is the "ipam" section of the network configuration.
type Config struct {
	Type string `json:"type"`
	// Socket of berth-agent's IPAM server. Default /run/berth/ipam.sock.
	Socket string `json:"socket,omitempty"`
	// Pools used when neither the pod nor its namespace names any; at most
	// one per IP family.
	Pools []string `json:"pools,omitempty"`
	// Timeout of one call to the agent, as a Go duration. Default 30s
	// (ADD); DEL, CHECK, STATUS and GC use at most 10s.
	Timeout string `json:"timeout,omitempty"`
	// QueueDir holds DELs made while the agent is down. Default
	// /run/berth/ipam-del-queue.
	QueueDir string `json:"queueDir,omitempty"`

	timeout time.Duration
}

// NetConf is the network configuration berth-ipam reads.
type NetConf struct {
	types.PluginConf
	IPAM json.RawMessage `json:"ipam"`
}

// k8sArgs are the CNI_ARGS a Kubernetes runtime passes.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS names
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive // CNI_ARGS names
	K8S_POD_UID                types.UnmarshallableString //nolint:revive // CNI_ARGS names
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive // CNI_ARGS names
}

// LoadConfig parses the network configuration; the ipam section strictly.
func LoadConfig(stdin []byte) (*NetConf, *Config, error) {
	var nc NetConf
	if err := json.Unmarshal(stdin, &nc); err != nil {
		return nil, nil, fmt.Errorf("network configuration: %w", err)
	}
	if len(nc.IPAM) == 0 {
		return nil, nil, errors.New(`network configuration: no "ipam" section`)
	}
	var c Config
	d := json.NewDecoder(bytes.NewReader(nc.IPAM))
	d.DisallowUnknownFields()
	if err := d.Decode(&c); err != nil {
		return nil, nil, fmt.Errorf("ipam configuration: %w", err)
	}
	if c.Socket == "" {
		c.Socket = protocol.DefaultSocket
	}
	if c.QueueDir == "" {
		c.QueueDir = DefaultQueueDir
	}
	if !filepath.IsAbs(c.Socket) || !filepath.IsAbs(c.QueueDir) {
		return nil, nil, fmt.Errorf("ipam configuration: socket %q and queueDir %q must be absolute paths", c.Socket, c.QueueDir)
	}
	if len(c.Pools) > 2 {
		return nil, nil, fmt.Errorf("ipam configuration: pools %v: at most two (one per IP family)", c.Pools)
	}
	c.timeout = DefaultTimeout
	if c.Timeout != "" {
		t, err := time.ParseDuration(c.Timeout)
		if err != nil || t <= 0 {
			return nil, nil, fmt.Errorf("ipam configuration: timeout %q: want a positive Go duration such as 30s", c.Timeout)
		}
		c.timeout = t
	}
	return &nc, &c, nil
}

func request(args *skel.CmdArgs, nc *NetConf, c *Config) (*protocol.Request, error) {
	var ka k8sArgs
	ka.IgnoreUnknown = true
	if err := types.LoadArgs(args.Args, &ka); err != nil {
		return nil, fmt.Errorf("CNI_ARGS: %w", err)
	}
	return &protocol.Request{
		ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns,
		PodNamespace: string(ka.K8S_POD_NAMESPACE), PodName: string(ka.K8S_POD_NAME), PodUID: string(ka.K8S_POD_UID),
		Pools: c.Pools, Network: nc.Name,
	}, nil
}

// call sends one request to the agent within timeout.
func call(ctx context.Context, c *Config, cmd string, req *protocol.Request, timeout time.Duration) (*protocol.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	code, data, err := post(ctx, c.Socket, "/v1/"+cmd, body)
	if err != nil {
		return nil, err
	}
	var out protocol.Response
	if err := protocol.Decode(data, &out); err != nil {
		return nil, fmt.Errorf("berth-agent at %s: HTTP %d: %w", c.Socket, code, err)
	}
	return &out, nil
}

type unreachableError struct {
	socket string
	err    error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("berth-agent is not reachable at %s: %v", e.socket, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// down reports whether err says nothing listens on the socket.
func down(err error) bool {
	var u *unreachableError
	return errors.As(err, &u) && (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED))
}

func cniError(resp *protocol.Response) error {
	if resp.Error == nil {
		return nil
	}
	return types.NewError(resp.Error.Code, resp.Error.Msg, resp.Error.Details)
}

// Add is CNI ADD: the agent's addresses as a CNI result.
func Add(ctx context.Context, args *skel.CmdArgs) (*types100.Result, string, error) {
	nc, c, err := LoadConfig(args.StdinData)
	if err != nil {
		return nil, "", types.NewError(types.ErrDecodingFailure, "berth-ipam", err.Error())
	}
	req, err := request(args, nc, c)
	if err != nil {
		return nil, "", types.NewError(types.ErrInvalidNetworkConfig, "berth-ipam", err.Error())
	}
	resp, err := call(ctx, c, protocol.CommandAdd, req, c.timeout)
	if err != nil {
		return nil, "", types.NewError(types.ErrTryAgainLater, "berth-ipam ADD", err.Error())
	}
	if err := cniError(resp); err != nil {
		return nil, "", err
	}
	res := &types100.Result{CNIVersion: types100.ImplementedSpecVersion}
	for _, ip := range resp.IPs {
		addr, err := types.ParseCIDR(ip.Address)
		if err != nil {
			return nil, "", fmt.Errorf("berth-agent returned address %q: %w", ip.Address, err)
		}
		cfg := &types100.IPConfig{Address: *addr}
		if ip.Gateway != "" {
			cfg.Gateway = net.ParseIP(ip.Gateway)
		}
		res.IPs = append(res.IPs, cfg)
	}
	for _, r := range resp.Routes {
		_, dst, err := net.ParseCIDR(r.Dst)
		if err != nil {
			return nil, "", fmt.Errorf("berth-agent returned route %q: %w", r.Dst, err)
		}
		rt := &types.Route{Dst: *dst}
		if r.GW != "" {
			rt.GW = net.ParseIP(r.GW)
		}
		res.Routes = append(res.Routes, rt)
	}
	return res, nc.CNIVersion, nil
}

// Del is CNI DEL: idempotent; with the agent down it is queued for the
// agent, and the address stays claimed until the agent has released it.
func Del(ctx context.Context, args *skel.CmdArgs) error {
	_, c, err := LoadConfig(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "berth-ipam", err.Error())
	}
	req := &protocol.Request{ContainerID: args.ContainerID, IfName: args.IfName}
	resp, err := call(ctx, c, protocol.CommandDel, req, min(c.timeout, 10*time.Second))
	if down(err) {
		if qerr := protocol.Enqueue(c.QueueDir, req); qerr != nil {
			return types.NewError(types.ErrTryAgainLater, "berth-ipam DEL", fmt.Sprintf("%v; queueing the DEL failed too: %v", err, qerr))
		}
		return nil
	}
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, "berth-ipam DEL", err.Error())
	}
	return cniError(resp)
}

// Check is CNI CHECK: the agent still has the container's addresses bound,
// and they are those of the previous result.
func Check(ctx context.Context, args *skel.CmdArgs) error {
	nc, c, err := LoadConfig(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "berth-ipam", err.Error())
	}
	resp, err := call(ctx, c, protocol.CommandCheck, &protocol.Request{ContainerID: args.ContainerID, IfName: args.IfName}, min(c.timeout, 10*time.Second))
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, "berth-ipam CHECK", err.Error())
	}
	if err := cniError(resp); err != nil {
		return err
	}
	if nc.RawPrevResult == nil {
		return nil
	}
	if err := parsePrev(nc); err != nil {
		return err
	}
	prev, err := types100.NewResultFromResult(nc.PrevResult)
	if err != nil {
		return fmt.Errorf("prevResult: %w", err)
	}
	var want []string
	for _, ip := range resp.IPs {
		want = append(want, ip.Address)
	}
	for _, ip := range prev.IPs {
		if !slices.Contains(want, ip.Address.IP.String()) {
			return fmt.Errorf("CHECK: address %s of the previous result is not claimed by container %s (claimed: %s)",
				ip.Address.IP, args.ContainerID, strings.Join(want, ", "))
		}
	}
	return nil
}

func parsePrev(nc *NetConf) error {
	if nc.PrevResult != nil {
		return nil
	}
	return version.ParsePrevResult(&nc.PluginConf)
}

// Status is CNI STATUS: ready while the agent serves its socket.
func Status(ctx context.Context, args *skel.CmdArgs) error {
	_, c, err := LoadConfig(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "berth-ipam", err.Error())
	}
	resp, err := call(ctx, c, protocol.CommandStatus, &protocol.Request{}, min(c.timeout, 5*time.Second))
	if err != nil {
		return types.NewError(errPluginNotAvailable, "berth-ipam STATUS", err.Error())
	}
	return cniError(resp)
}

// GC is CNI GC: the agent releases this node's claims of attachments the
// runtime no longer has.
func GC(ctx context.Context, args *skel.CmdArgs) error {
	nc, c, err := LoadConfig(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "berth-ipam", err.Error())
	}
	req := &protocol.Request{Network: nc.Name}
	for _, a := range nc.ValidAttachments {
		req.ValidAttachments = append(req.ValidAttachments, protocol.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	resp, err := call(ctx, c, protocol.CommandGC, req, min(c.timeout, 10*time.Second))
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, "berth-ipam GC", err.Error())
	}
	return cniError(resp)
}
