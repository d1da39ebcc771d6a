package main

import (
	"io"
	"testing"
	"time"
)

func TestParseFlags_ipam(t *testing.T) {
	env := func(k string) string {
		if k == "NODE_NAME" {
			return "n1"
		}
		return ""
	}
	o, err := parseFlags([]string{"--ipam-socket=/run/berth/ipam.sock", "--ipam-early-release", "--ipam-cni-conf-dir=/host/etc/cni/net.d"}, env, io.Discard)
	if err != nil || o.agent.IPAM == nil || o.agent.IPAM.SocketPath != "/run/berth/ipam.sock" || !o.agent.IPAM.EarlyRelease || !o.agent.IPAM.Prepare || !o.agent.IPAM.DeferRelease ||
		o.agent.IPAM.CNIConfDir != "/host/etc/cni/net.d" {
		t.Fatalf("parseFlags: %+v, %v", o.agent.IPAM, err)
	}
	if o, err := parseFlags([]string{"--ipam-socket=/run/berth/ipam.sock", "--ipam-prepare=false"}, env, io.Discard); err != nil || o.agent.IPAM.Prepare {
		t.Fatalf("--ipam-prepare=false: %+v, %v; want off", o.agent.IPAM, err)
	}
	if o, err := parseFlags([]string{"--ipam-socket=/run/berth/ipam.sock", "--ipam-defer-release=false"}, env, io.Discard); err != nil || o.agent.IPAM.DeferRelease {
		t.Fatalf("--ipam-defer-release=false: %+v, %v; want off", o.agent.IPAM, err)
	}
	if o.agent.IPAM.ConflictQuarantine != time.Hour {
		t.Fatalf("--ipam-conflict-quarantine by default: %s, want 1h", o.agent.IPAM.ConflictQuarantine)
	}
	if o, err := parseFlags([]string{"--ipam-socket=/run/berth/ipam.sock", "--ipam-conflict-quarantine=10m"}, env, io.Discard); err != nil ||
		o.agent.IPAM.ConflictQuarantine != 10*time.Minute {
		t.Fatalf("--ipam-conflict-quarantine=10m: %+v, %v", o.agent.IPAM, err)
	}
	if o, err := parseFlags(nil, env, io.Discard); err != nil || o.agent.IPAM != nil {
		t.Fatalf("without --ipam-socket: IPAM %+v, %v; want off", o.agent.IPAM, err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  func(string) string
		want string
	}{
		{"relative socket", []string{"--ipam-socket=ipam.sock"}, env, `--ipam-socket "ipam.sock": want an absolute path`},
		{"relative CNI configuration directory", []string{"--ipam-socket=/run/berth/ipam.sock", "--ipam-cni-conf-dir=net.d"}, env,
			`--ipam-cni-conf-dir "net.d": want an absolute path`},
		{"no node name", []string{"--ipam-socket=/run/berth/ipam.sock"}, func(string) string { return "" },
			"--ipam-socket needs --node-name (env NODE_NAME): claims record their node"},
		{"quarantine of 0", []string{"--ipam-socket=/run/berth/ipam.sock", "--ipam-conflict-quarantine=0s"}, env,
			"--ipam-conflict-quarantine 0s: want > 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseFlags(tc.args, tc.env, io.Discard); err == nil || err.Error() != tc.want {
				t.Fatalf("err = %v, want %s", err, tc.want)
			}
		})
	}
}
