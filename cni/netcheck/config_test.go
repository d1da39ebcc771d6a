package netcheck

import (
	"errors"
	"net/netip"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    Config
		wantErr string
	}{
		{
			name: "defaults",
			in:   `{"cniVersion": "1.0.0", "name": "berth", "type": "berth-netcheck"}`,
		},
		{
			name: "every key",
			in: `{"cniVersion": "1.1.0", "name": "berth", "type": "berth-netcheck",
				"conflictWindow": "250ms", "probes": 2, "timeout": "1s", "tries": 5,
				"skipGateway": true, "icmp": true, "targets": ["10.96.0.10:53", "10.244.0.1", "[fd00::a]:53", "fd00::1"],
				"ipamSocket": "/var/run/berth/ipam.sock"}`,
			want: Config{
				ConflictWindow: 250 * time.Millisecond, Probes: 2, Timeout: time.Second, Tries: 5,
				SkipGateway: true, ICMP: true, IPAMSocket: "/var/run/berth/ipam.sock",
				Targets: []Target{
					{Addr: netip.MustParseAddr("10.96.0.10"), Port: 53},
					{Addr: netip.MustParseAddr("10.244.0.1")},
					{Addr: netip.MustParseAddr("fd00::a"), Port: 53},
					{Addr: netip.MustParseAddr("fd00::1")},
				},
			},
		},
		{
			name: "standard keys a runtime adds",
			in: `{"cniVersion": "1.0.0", "name": "berth", "type": "berth-netcheck", "capabilities": {"portMappings": true},
				"runtimeConfig": {"portMappings": []}, "args": {"cni": {}}, "prevResult": {"cniVersion": "1.0.0", "ips": []}}`,
		},
		{
			name:    "unknown key",
			in:      `{"cniVersion": "1.0.0", "type": "berth-netcheck", "conflictWindw": "1s"}`,
			wantErr: `config: unknown key "conflictWindw"; berth-netcheck accepts conflictWindow, probes, timeout, tries, skipGateway, icmp, targets, ipamSocket and the standard CNI keys`,
		},
		{
			name:    "keys are case sensitive",
			in:      `{"ConflictWindow": "1s"}`,
			wantErr: `config: unknown key "ConflictWindow"; berth-netcheck accepts conflictWindow, probes, timeout, tries, skipGateway, icmp, targets, ipamSocket and the standard CNI keys`,
		},
		{
			name:    "ipam is not for a chained check",
			in:      `{"type": "berth-netcheck", "ipam": {"type": "host-local"}}`,
			wantErr: `config: unknown key "ipam"; berth-netcheck accepts conflictWindow, probes, timeout, tries, skipGateway, icmp, targets, ipamSocket and the standard CNI keys`,
		},
		{
			name:    "not an object",
			in:      `["berth-netcheck"]`,
			wantErr: `config: not a JSON object: json: cannot unmarshal array into Go value of type map[string]json.RawMessage`,
		},
		{
			name:    "null",
			in:      `null`,
			wantErr: `config: not a JSON object`,
		},
		{
			name:    "duration as a number",
			in:      `{"conflictWindow": 100}`,
			wantErr: `config: conflictWindow: want a duration string such as "100ms", got 100`,
		},
		{
			name:    "duration without unit",
			in:      `{"timeout": "200"}`,
			wantErr: `config: timeout: want a duration string such as "100ms", got "200"`,
		},
		{
			name:    "window too short",
			in:      `{"conflictWindow": "1ms"}`,
			wantErr: `config: conflictWindow 1ms: want 10ms to 10s`,
		},
		{
			name:    "window negative",
			in:      `{"conflictWindow": "-1s"}`,
			wantErr: `config: conflictWindow -1s: want 10ms to 10s`,
		},
		{
			name:    "timeout too long",
			in:      `{"timeout": "1m"}`,
			wantErr: `config: timeout 1m0s: want 10ms to 10s`,
		},
		{
			name:    "probes as a string",
			in:      `{"probes": "3"}`,
			wantErr: `config: probes: want a whole number, got "3"`,
		},
		{
			name:    "probes fractional",
			in:      `{"probes": 2.5}`,
			wantErr: `config: probes: want a whole number, got 2.5`,
		},
		{
			name:    "too many probes",
			in:      `{"probes": 11}`,
			wantErr: `config: probes 11: want 1 to 10`,
		},
		{
			name:    "negative tries",
			in:      `{"tries": -1}`,
			wantErr: `config: tries -1: want 1 to 20`,
		},
		{
			name:    "icmp as a string",
			in:      `{"icmp": "yes"}`,
			wantErr: `config: icmp: want true or false, got "yes"`,
		},
		{
			name:    "skipGateway null",
			in:      `{"skipGateway": null}`,
			wantErr: `config: skipGateway: want true or false, got null`,
		},
		{
			name:    "relative ipamSocket",
			in:      `{"ipamSocket": "ipam.sock"}`,
			wantErr: `config: ipamSocket "ipam.sock": want an absolute path`,
		},
		{
			name:    "ipamSocket not a string",
			in:      `{"ipamSocket": true}`,
			wantErr: `config: ipamSocket: want an absolute path, got true`,
		},
		{
			name:    "targets not a list",
			in:      `{"targets": "10.96.0.10"}`,
			wantErr: `config: targets: want a list of strings such as ["10.96.0.10:53"], got "10.96.0.10"`,
		},
		{
			name:    "target is a name",
			in:      `{"targets": ["kube-dns.kube-system:53"]}`,
			wantErr: `config: targets: target "kube-dns.kube-system:53": want an IP address or IP:port ("[IPv6]:port")`,
		},
		{
			name:    "target port 0",
			in:      `{"targets": ["10.96.0.10:0"]}`,
			wantErr: `config: targets: target "10.96.0.10:0": port 0`,
		},
		{
			name:    "target with a zone",
			in:      `{"targets": ["fe80::1%eth0"]}`,
			wantErr: `config: targets: target "fe80::1%eth0": zones are not supported`,
		},
		{
			name:    "target multicast",
			in:      `{"targets": ["224.0.0.1"]}`,
			wantErr: `config: targets: target "224.0.0.1": want a unicast address`,
		},
		{
			name:    "target unspecified",
			in:      `{"targets": ["0.0.0.0:53"]}`,
			wantErr: `config: targets: target "0.0.0.0:53": want a unicast address`,
		},
		{
			name:    "bad prevResult type",
			in:      `{"prevResult": "none"}`,
			wantErr: `config: json: cannot unmarshal string into Go struct field PluginConf.prevResult of type map[string]interface {}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseConfig([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("ParseConfig error\n got  %v\n want %s", err, tc.wantErr)
				}
				if !errors.Is(err, ErrConfig) {
					t.Errorf("error %v is not ErrConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			if !reflect.DeepEqual(got.Config, tc.want) {
				t.Errorf("Config = %+v, want %+v", got.Config, tc.want)
			}
		})
	}
}

func TestNewChecker(t *testing.T) {
	c, err := NewChecker(Config{})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{ConflictWindow: DefaultConflictWindow, Probes: DefaultProbes, Timeout: DefaultTimeout, Tries: DefaultTries,
		IPAMSocket: "/run/berth/ipam.sock"}
	if !reflect.DeepEqual(c.cfg, want) {
		t.Errorf("defaults = %+v, want %+v", c.cfg, want)
	}
	if _, err := NewChecker(Config{Tries: 21}); err == nil || err.Error() != "config: tries 21: want 1 to 20" {
		t.Errorf("NewChecker(tries 21) = %v", err)
	}
	if _, err := NewChecker(Config{Targets: []Target{{Port: 53}}}); err == nil || err.Error() != "config: targets: a target without an address" {
		t.Errorf("NewChecker(zero target) = %v", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion": "1.0.0", "name": "berth", "type": "berth-netcheck"}`,
		`{"conflictWindow": "250ms", "probes": 2, "timeout": "1s", "tries": 5, "skipGateway": true, "icmp": false}`,
		`{"targets": ["10.96.0.10:53", "[fd00::a]:53", "fd00::1"]}`,
		`{"prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.3/24"}]}}`,
		`{"probes": 1e3}`,
		`{"ipamSocket": "/run/berth/ipam.sock"}`,
		`null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		conf, err := ParseConfig(in)
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error %v is not ErrConfig", err)
			}
			return
		}
		// Whatever parses is valid and makes a checker within the limits.
		c, err := NewChecker(conf.Config)
		if err != nil {
			t.Fatalf("parsed config %+v rejected by NewChecker: %v", conf.Config, err)
		}
		cfg := c.cfg
		if cfg.ConflictWindow < minWindow || cfg.ConflictWindow > maxWindow || cfg.Probes < 1 || cfg.Probes > maxProbes ||
			cfg.Timeout < minWindow || cfg.Timeout > maxWindow || cfg.Tries < 1 || cfg.Tries > maxTries || len(cfg.Targets) > maxTargets ||
			!filepath.IsAbs(cfg.IPAMSocket) {
			t.Fatalf("config out of limits: %+v", cfg)
		}
		for _, tg := range cfg.Targets {
			if back, err := ParseTarget(tg.String()); err != nil || back != tg {
				t.Fatalf("target %v does not round-trip: %v, %v", tg, back, err)
			}
		}
	})
}
