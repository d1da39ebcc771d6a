package netcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// prevResult is what bridge + IPAM would hand on for pod's eth0.
func prevResult(pod *node, addrs []string, gws ...string) string {
	ips := ""
	for i, a := range addrs {
		if i > 0 {
			ips += ","
		}
		ips += fmt.Sprintf(`{"interface": 2, "address": %q, "gateway": %q}`, a, gws[i])
	}
	return fmt.Sprintf(`{
		"cniVersion": "1.0.0",
		"interfaces": [
			{"name": "br0", "mac": "02:00:00:00:00:01"},
			{"name": "vethpod", "mac": "02:00:00:00:00:02"},
			{"name": "eth0", "mac": %q, "sandbox": %q}
		],
		"ips": [%s],
		"routes": [{"dst": "0.0.0.0/0"}],
		"dns": {"nameservers": ["10.96.0.10"]}
	}`, pod.mac, pod.ns.Path(), ips)
}

func cmdArgs(pod *node, conf string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "c1", Netns: pod.ns.Path(), IfName: "eth0", StdinData: []byte(conf)}
}

func ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestAdd_PassesPrevResultThrough: ADD and CHECK pass on a healthy link and
// ADD returns the previous result unchanged, in the configuration's version.
func TestAdd_PassesPrevResultThrough(t *testing.T) {
	t.Parallel()
	s := newSegment(t)
	s.attach("gw", false, gwAddr...)
	pod := s.attach("pod", false, dual...)
	for _, v := range []string{"1.0.0", "1.1.0"} {
		prev := strings.Replace(prevResult(pod, dual, gw4, gw6), `"1.0.0"`, `"`+v+`"`, 1)
		conf := fmt.Sprintf(`{"cniVersion": %q, "name": "berth", "type": "berth-netcheck", "prevResult": %s}`, v, prev)
		res, err := Add(ctx(t), cmdArgs(pod, conf))
		if err != nil {
			t.Fatalf("Add %s: %v", v, err)
		}
		var got, want any
		b, _ := json.Marshal(res)
		_ = json.Unmarshal(b, &got)
		_ = json.Unmarshal([]byte(prev), &want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Add %s result\n%s\nwant the previous result\n%s", v, b, prev)
		}
		if err := Check(ctx(t), cmdArgs(pod, conf)); err != nil {
			t.Errorf("Check %s: %v", v, err)
		}
	}

	// An older configuration version gets its result in that version.
	prev04 := `{"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": "` + pod.ns.Path() + `"}],
		"ips": [{"version": "4", "interface": 0, "address": "10.1.2.3/24", "gateway": "10.1.2.1"}]}`
	res, err := Add(ctx(t), cmdArgs(pod, `{"cniVersion": "0.4.0", "name": "berth", "type": "berth-netcheck", "prevResult": `+prev04+`}`))
	if err != nil {
		t.Fatalf("Add 0.4.0: %v", err)
	}
	if res.Version() != "0.4.0" {
		t.Errorf("result version %s, want 0.4.0", res.Version())
	}
}

func TestAdd_Errors(t *testing.T) {
	t.Parallel()
	s := newSegment(t)
	gw := s.attach("gw", false, gwAddr...)
	other := s.attach("other", false, "10.1.2.7/24")
	pod := s.attach("pod", false, dual...)
	// No agent: TestAdd_reportsConflict has one.
	noAgent := filepath.Join(t.TempDir(), "no-agent.sock")
	conf := func(addrs []string, gws ...string) string {
		return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "berth", "type": "berth-netcheck", "tries": 2, "ipamSocket": %q, "prevResult": %s}`,
			noAgent, prevResult(pod, addrs, gws...))
	}
	gw.delAddr("fd00:1:2::1/64")
	for _, tc := range []struct {
		name     string
		conf     string
		wantCode uint
		wantMsg  string
	}{
		{
			name: "address in use", conf: conf([]string{"10.1.2.7/24"}, gw4),
			wantCode: CodeAddressInUse, wantMsg: "IP 10.1.2.7 on eth0 is already in use by " + other.mac.String(),
		},
		{
			name: "gateway unreachable", conf: conf(dual, gw4, gw6),
			wantCode: CodeGatewayUnreachable, wantMsg: "gateway fd00:1:2::1 unreachable from eth0 after 2 tries (NDP: no reply)",
		},
		{
			name: "target unreachable", conf: `{"cniVersion": "1.0.0", "name": "berth", "type": "berth-netcheck", "tries": 1, "targets": ["10.1.2.1:53"],
				"prevResult": ` + prevResult(pod, v4, gw4) + `}`,
			wantCode: CodeTargetUnreachable, wantMsg: "target 10.1.2.1:53 unreachable from eth0 after 1 try (TCP: connection refused)",
		},
		{
			name: "no prevResult", conf: `{"cniVersion": "1.0.0", "name": "berth", "type": "berth-netcheck"}`,
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "config: no prevResult: berth-netcheck is a chained plugin; list it after the main plugin in a conflist",
		},
		{
			name: "unknown key", conf: `{"cniVersion": "1.0.0", "name": "berth", "type": "berth-netcheck", "window": "1s"}`,
			wantCode: types.ErrInvalidNetworkConfig,
			wantMsg:  `config: unknown key "window"; berth-netcheck accepts conflictWindow, probes, timeout, tries, skipGateway, icmp, targets, ipamSocket and the standard CNI keys`,
		},
		{
			name: "no such interface", conf: `{"cniVersion": "1.0.0", "name": "berth", "type": "berth-netcheck", "prevResult":
				{"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.3/24"}]}}`,
			wantCode: CodeCheckFailed, wantMsg: "berth-netcheck: interface eth1: Link not found",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := cmdArgs(pod, tc.conf)
			if tc.name == "no such interface" {
				args.IfName = "eth1"
			}
			_, err := Add(ctx(t), args)
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("Add = %v, want a *types.Error", err)
			}
			if e.Code != tc.wantCode || e.Msg != tc.wantMsg {
				t.Errorf("Add = code %d %q,\nwant  code %d %q", e.Code, e.Msg, tc.wantCode, tc.wantMsg)
			}
			if err := Check(ctx(t), args); err == nil || err.Error() != tc.wantMsg {
				t.Errorf("Check = %v, want %q", err, tc.wantMsg)
			}
		})
	}
}

func TestDel(t *testing.T) {
	for _, conf := range []string{"", "{", `{"cniVersion": "1.0.0", "bogus": true}`} {
		if err := CmdDel(&skel.CmdArgs{Netns: "/nonexistent", IfName: "eth0", StdinData: []byte(conf)}); err != nil {
			t.Errorf("CmdDel(%q) = %v, want nil", conf, err)
		}
	}
}

func TestRequestFor(t *testing.T) {
	idx := func(i int) *int { return &i }
	prefix := func(s string) net.IPNet {
		ip, n, _ := net.ParseCIDR(s)
		n.IP = ip
		return *n
	}
	prev := &current.Result{
		Interfaces: []*current.Interface{
			{Name: "cni0"},
			{Name: "eth0", Sandbox: "/run/netns/p"},
			{Name: "net1", Sandbox: "/run/netns/p"},
		},
		IPs: []*current.IPConfig{
			{Interface: idx(0), Address: prefix("10.244.0.1/24")},                                     // the bridge: not the pod's
			{Interface: idx(1), Address: prefix("10.244.0.5/24"), Gateway: net.ParseIP("10.244.0.1")}, // own gateway
			{Interface: idx(1), Address: prefix("fd00::5/64")},                                        // default route's gateway
			{Interface: idx(2), Address: prefix("192.168.0.5/24")},                                    // another interface
			{Address: prefix("10.245.0.5/24")},                                                        // no interface: eth0's
		},
		Routes: []*types.Route{
			{Dst: prefix("0.0.0.0/0"), GW: net.ParseIP("10.244.0.1")},
			{Dst: prefix("::/0"), GW: net.ParseIP("fd00::1")},
			{Dst: prefix("10.96.0.0/16"), GW: net.ParseIP("10.245.0.254")},
		},
	}
	got := RequestFor(prev, "eth0")
	want := Request{
		IfName:   "eth0",
		Addrs:    []netip.Prefix{netip.MustParsePrefix("10.244.0.5/24"), netip.MustParsePrefix("fd00::5/64"), netip.MustParsePrefix("10.245.0.5/24")},
		Gateways: []netip.Addr{netip.MustParseAddr("10.244.0.1"), netip.MustParseAddr("fd00::1")},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("RequestFor =\n%+v\nwant\n%+v", got, want)
	}
}
