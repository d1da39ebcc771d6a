// Package netcheck is berth-netcheck, a chained CNI plugin that runs after
// the main plugin, inside the pod's network namespace, and fails ADD unless
// the pod's addresses are unique on the link (ARP probe, NDP duplicate
// address detection) and its gateway answers. It passes the previous
// result through, keeps no state and never talks to the API server; an
// address another host answers for is reported to berth-agent (CONFLICT on
// berth-ipam's socket) before ADD fails, so that the pod's next ADD gets
// another. See README.md.
package netcheck

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berth-io/berth/cni/ipam"
	"github.com/berth-io/berth/cni/ipam/protocol"
	berthversion "github.com/berth-io/berth/internal/version"
)

// CNI error codes of berth-netcheck (codes 100 and up belong to plugins).
// Configuration errors use the standard code 7 (invalid network config).
const (
	// CodeAddressInUse: another host answered for one of the pod's addresses.
	CodeAddressInUse uint = 120
	// CodeGatewayUnreachable: the gateway did not answer.
	CodeGatewayUnreachable uint = 121
	// CodeTargetUnreachable: an extra target did not answer.
	CodeTargetUnreachable uint = 122
	// CodeCheckFailed: the checks could not run (no such interface, the
	// interface is down, a socket could not be opened, time ran out).
	CodeCheckFailed uint = 123
)

// Versions are the CNI spec versions berth-netcheck speaks.
var Versions = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// About is printed when the binary runs without CNI_COMMAND.
var About = "berth-netcheck " + berthversion.String() + ": duplicate-address and gateway checks in a CNI chain"

// CmdAdd is the ADD command: run the checks, announce the addresses, and
// print the previous result.
func CmdAdd(args *skel.CmdArgs) error {
	res, err := Add(context.Background(), args)
	if err != nil {
		return err
	}
	return res.Print()
}

// CmdCheck is the CHECK command: run the checks again.
func CmdCheck(args *skel.CmdArgs) error {
	return Check(context.Background(), args)
}

// CmdDel is the DEL command. berth-netcheck changes nothing, so there is
// nothing to undo: it succeeds whatever it is given.
func CmdDel(*skel.CmdArgs) error { return nil }

// CmdGC is the GC command: no state, nothing to collect.
func CmdGC(*skel.CmdArgs) error { return nil }

// CmdStatus is the STATUS command: ready whenever it can run.
func CmdStatus(*skel.CmdArgs) error { return nil }

// Add runs the checks for args and, when they pass, announces the
// addresses and returns the previous result in the configuration's
// version. Errors are *types.Error with the codes above.
func Add(ctx context.Context, args *skel.CmdArgs) (types.Result, error) {
	conf, prev, err := load(args)
	if err != nil {
		return nil, err
	}
	if err := check(ctx, args, conf, prev, true); err != nil {
		return nil, err
	}
	res, err := prev.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("result as version %s: %v", conf.CNIVersion, err), "")
	}
	return res, nil
}

// Check runs the checks for args without announcing anything.
func Check(ctx context.Context, args *skel.CmdArgs) error {
	conf, prev, err := load(args)
	if err != nil {
		return err
	}
	return check(ctx, args, conf, prev, false)
}

// load parses the configuration and the previous result.
func load(args *skel.CmdArgs) (*NetConf, *current.Result, error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, nil, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	if conf.RawPrevResult == nil {
		return nil, nil, types.NewError(types.ErrInvalidNetworkConfig,
			"config: no prevResult: berth-netcheck is a chained plugin; list it after the main plugin in a conflist", "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("config: prevResult: %v", err), "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("config: prevResult: %v", err), "")
	}
	return conf, prev, nil
}

func check(ctx context.Context, args *skel.CmdArgs, conf *NetConf, prev *current.Result, announce bool) error {
	c, err := NewChecker(conf.Config)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	req := RequestFor(prev, args.IfName)
	if len(req.Addrs) == 0 && len(conf.Config.Targets) == 0 {
		return nil
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("netns %s: %v", args.Netns, err), "")
	}
	defer netns.Close()
	req.NetNS = netns
	req.Announce = announce
	err = c.Run(ctx, req)
	var conflict *ConflictError
	if announce && errors.As(err, &conflict) {
		return conflictError(ctx, args, c.cfg, conflict)
	}
	return cniError(err)
}

// conflictError tells berth-agent of an ADD's conflict (CONFLICT over
// cfg.IPAMSocket, within DefaultReportTimeout), so that the pod's next ADD
// gets another address, and returns the ADD's error: the conflict, with
// the report's outcome as its details. An agent that cannot be reached or
// does not take the report (an older one) changes only those details.
func conflictError(ctx context.Context, args *skel.CmdArgs, cfg Config, conflict *ConflictError) error {
	ctx, cancel := context.WithTimeout(ctx, DefaultReportTimeout)
	defer cancel()
	req := &protocol.Request{ContainerID: args.ContainerID, IfName: args.IfName, Address: conflict.IP.String()}
	if conflict.MAC != nil {
		req.MAC = conflict.MAC.String()
	}
	details := "berth-agent took the address out of use: the pod's next ADD gets another address"
	if err := ipam.ReportConflict(ctx, cfg.IPAMSocket, req); err != nil {
		details = fmt.Sprintf("berth-agent was not told (%v): the pod's next ADD may get the same address", err)
	}
	return types.NewError(CodeAddressInUse, conflict.Error(), details)
}

// RequestFor picks from prev the addresses and gateways of interface
// ifName (addresses without an interface count as ifName's). A gateway is
// the address's own, or else the gateway of a default route of its family
// on its subnet.
func RequestFor(prev *current.Result, ifName string) Request {
	req := Request{IfName: ifName}
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil {
			i := *ipc.Interface
			if i < 0 || i >= len(prev.Interfaces) || prev.Interfaces[i].Name != ifName || prev.Interfaces[i].Sandbox == "" {
				continue
			}
		}
		addr, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			continue
		}
		addr = addr.Unmap()
		ones, _ := ipc.Address.Mask.Size()
		pfx := netip.PrefixFrom(addr, ones)
		req.Addrs = append(req.Addrs, pfx)
		gw, ok := netip.AddrFromSlice(ipc.Gateway)
		if !ok {
			gw = defaultGateway(prev, pfx)
		}
		if gw.IsValid() {
			req.Gateways = append(req.Gateways, gw.Unmap())
		}
	}
	return req
}

func defaultGateway(prev *current.Result, pfx netip.Prefix) netip.Addr {
	for _, r := range prev.Routes {
		if r == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		gw, ok := netip.AddrFromSlice(r.GW)
		if !ok || ones != 0 {
			continue
		}
		gw = gw.Unmap()
		if gw.Is4() == pfx.Addr().Is4() && pfx.Masked().Contains(gw) {
			return gw
		}
	}
	return netip.Addr{}
}

// cniError maps a Run error to a CNI error with berth-netcheck's codes.
func cniError(err error) error {
	var (
		conflict    *ConflictError
		unreachable *UnreachableError
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &conflict):
		return types.NewError(CodeAddressInUse, conflict.Error(), "")
	case errors.As(err, &unreachable) && unreachable.What == "gateway":
		return types.NewError(CodeGatewayUnreachable, unreachable.Error(), "")
	case errors.As(err, &unreachable):
		return types.NewError(CodeTargetUnreachable, unreachable.Error(), "")
	}
	return types.NewError(CodeCheckFailed, "berth-netcheck: "+err.Error(), "")
}
