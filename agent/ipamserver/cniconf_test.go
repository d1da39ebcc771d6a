package ipamserver

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const (
	confBridge = `{"cniVersion": "1.1.0", "name": "berth", "plugins": [
  {"type": "bridge", "bridge": "cni0", "ipam": {"type": "berth-ipam", "pools": ["pods", "pods-v6"]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}`
	confSingle  = `{"cniVersion": "1.0.0", "name": "underlay", "type": "macvlan", "master": "eth1", "ipam": {"type": "berth-ipam", "pools": ["vlan10"]}}`
	confNoPools = `{"cniVersion": "1.1.0", "name": "berth", "plugins": [{"type": "bridge", "ipam": {"type": "berth-ipam"}}]}`
	confOther   = `{"cniVersion": "1.1.0", "name": "other", "plugins": [{"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}]}`
)

func TestDefaultNetworkPools(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   map[string]string // in the directory
		want    []string
		wantErr string // a substring; with errIs, the error it wraps
		errIs   error
	}{
		{name: "conflist", files: map[string]string{"10-berth.conflist": confBridge}, want: []string{"pods", "pods-v6"}},
		{name: "single plugin .conf", files: map[string]string{"10-underlay.conf": confSingle}, want: []string{"vlan10"}},
		{name: "no pools named", files: map[string]string{"10-berth.conflist": confNoPools}},
		{name: "the first file in lexical order is the default network", want: []string{"pods", "pods-v6"},
			files: map[string]string{"10-berth.conflist": confBridge, "20-other.conflist": confOther, "notes.txt": "x"}},
		{name: "default network of another IPAM", files: map[string]string{"05-other.conflist": confOther, "10-berth.conflist": confBridge},
			wantErr: `05-other.conflist (network "other"): the default network does not use berth-ipam`, errIs: errNotBerthIPAM},
		{name: "another agent's socket", errIs: errNotBerthIPAM,
			files:   map[string]string{"10-berth.conflist": strings.Replace(confNoPools, `"berth-ipam"`, `"berth-ipam", "socket": "/run/other.sock"`, 1)},
			wantErr: "berth-ipam talks to /run/other.sock, not /run/berth/ipam.sock"},
		{name: "berth-ipam section the plugin would refuse", files: map[string]string{"10-berth.conflist": strings.Replace(confNoPools, `"berth-ipam"`, `"berth-ipam", "pool": "typo"`, 1)},
			wantErr: `plugin 0 (bridge): ipam configuration: json: unknown field "pool"`},
		{name: "not JSON", files: map[string]string{"10-berth.conflist": "{"}, wantErr: "10-berth.conflist: "},
		{name: "no configuration", files: map[string]string{"README": "x"}, wantErr: "no .conf, .conflist or .json file", errIs: fs.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, data := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			pools, err := defaultNetworkPools(dir, "/run/berth/ipam.sock")
			if tc.wantErr != "" || tc.errIs != nil {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || (tc.errIs != nil && !errors.Is(err, tc.errIs)) {
					t.Fatalf("err = %v, want one with %q (is %v)", err, tc.wantErr, tc.errIs)
				}
				return
			}
			if err != nil || !slices.Equal(pools, tc.want) {
				t.Fatalf("pools = %q, %v; want %q", pools, err, tc.want)
			}
		})
	}
	if _, err := defaultNetworkPools(filepath.Join(t.TempDir(), "absent"), "/run/berth/ipam.sock"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("absent directory: err = %v, want fs.ErrNotExist", err)
	}
}

// FuzzDefaultNetworkPools feeds any file content as the default network's
// configuration: never a panic, and pools only from a berth-ipam section
// the plugin itself accepts (at most two).
func FuzzDefaultNetworkPools(f *testing.F) {
	for _, s := range []string{confBridge, confSingle, confNoPools, confOther, "{", `{"plugins": [{"ipam": {"type": "berth-ipam"}}]}`} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, data string, list bool) {
		dir := t.TempDir()
		name := "10-x.conf"
		if list {
			name += "list"
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		pools, err := defaultNetworkPools(dir, "/run/berth/ipam.sock")
		if err == nil && (len(pools) > 2 || !strings.Contains(data, "berth-ipam")) {
			t.Fatalf("pools %q from %q", pools, data)
		}
	})
}
