// Command berth-netcheck is a chained CNI plugin that fails ADD unless the
// pod's addresses are unique on the link and its gateway answers. See
// cni/netcheck/README.md.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berth-io/berth/cni/netcheck"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    netcheck.CmdAdd,
		Check:  netcheck.CmdCheck,
		Del:    netcheck.CmdDel,
		GC:     netcheck.CmdGC,
		Status: netcheck.CmdStatus,
	}, netcheck.Versions, netcheck.About)
}
