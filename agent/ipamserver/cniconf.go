package ipamserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"

	"github.com/containernetworking/cni/libcni"

	cniipam "github.com/berth-io/berth/cni/ipam"
)

// errNotBerthIPAM is returned by defaultNetworkPools when the runtime's
// default network does not take its addresses from this agent.
var errNotBerthIPAM = errors.New("the default network does not use berth-ipam with this agent's socket")

// defaultNetworkPools returns the pools that the berth-ipam section of the
// runtime's default network names, from the CNI configuration directory
// dir: its first .conf, .conflist or .json file in lexical order, the one
// containerd and CRI-O use for a pod's eth0. Its berth-ipam section must
// talk to socket, else the error is errNotBerthIPAM. A directory with no
// configuration is an fs.ErrNotExist.
func defaultNetworkPools(dir, socket string) ([]string, error) {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, fmt.Errorf("CNI configuration directory %s: %w", dir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("CNI configuration directory %s: no .conf, .conflist or .json file: %w", dir, fs.ErrNotExist)
	}
	slices.Sort(files)
	file := files[0]
	var list *libcni.NetworkConfigList
	if filepath.Ext(file) == ".conflist" {
		list, err = libcni.NetworkConfFromFile(file)
	} else {
		var conf *libcni.PluginConfig
		if conf, err = libcni.ConfFromFile(file); err == nil { //nolint:staticcheck // single-plugin files are still what runtimes load
			list, err = libcni.ConfListFromConf(conf) //nolint:staticcheck // as above
		}
	}
	if err != nil {
		return nil, fmt.Errorf("CNI configuration %s: %w", file, err)
	}
	for i, p := range list.Plugins {
		var section struct {
			IPAM struct {
				Type string `json:"type"`
			} `json:"ipam"`
		}
		if json.Unmarshal(p.Bytes, &section) != nil || section.IPAM.Type != "berth-ipam" {
			continue
		}
		_, c, err := cniipam.LoadConfig(p.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CNI configuration %s, plugin %d (%s): %w", file, i, p.Network.Type, err)
		}
		if c.Socket != socket {
			return nil, fmt.Errorf("CNI configuration %s: berth-ipam talks to %s, not %s: %w", file, c.Socket, socket, errNotBerthIPAM)
		}
		return slices.Clone(c.Pools), nil
	}
	return nil, fmt.Errorf("CNI configuration %s (network %q): %w", file, list.Name, errNotBerthIPAM)
}
