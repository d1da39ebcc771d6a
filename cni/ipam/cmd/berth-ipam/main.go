// Command berth-ipam is Berth's CNI IPAM plugin; see cni/ipam/README.md.
package main

import (
	"context"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/berth-io/berth/cni/ipam"
)

func main() {
	ctx := context.Background()
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add: func(args *skel.CmdArgs) error {
			res, v, err := ipam.Add(ctx, args)
			if err != nil {
				return err
			}
			return types.PrintResult(res, v)
		},
		Del:    func(args *skel.CmdArgs) error { return ipam.Del(ctx, args) },
		Check:  func(args *skel.CmdArgs) error { return ipam.Check(ctx, args) },
		Status: func(args *skel.CmdArgs) error { return ipam.Status(ctx, args) },
		GC:     func(args *skel.CmdArgs) error { return ipam.GC(ctx, args) },
	}, version.All, "berth-ipam: addresses from berth-agent, retained for apps (https://github.com/berth-io/berth)")
}
