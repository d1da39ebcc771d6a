package main

import (
	"bytes"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	tests := []struct {
		name    string
		args    []string
		env     func(string) string
		check   func(t *testing.T, o options)
		wantErr string
	}{
		{
			name: "defaults",
			check: func(t *testing.T, o options) {
				a := o.agent
				for _, c := range []struct{ flag, got, want string }{
					{"nri-socket", a.NRI.SocketPath, "/var/run/nri/nri.sock"},
					{"nri-plugin-name", a.NRI.PluginName, "berth"},
					{"metrics-bind-address", a.MetricsBindAddress, ":9470"},
					{"health-probe-bind-address", a.HealthProbeBindAddress, ":9471"},
					{"node-name", a.NodeName, ""},
					{"log-format", o.logFormat, "text"},
				} {
					if c.got != c.want {
						t.Errorf("--%s = %q, want %q", c.flag, c.got, c.want)
					}
				}
				if *a.NRI.PluginIndex != 10 {
					t.Errorf("--nri-plugin-index = %d, want 10", *a.NRI.PluginIndex)
				}
				if o.logLevel != slog.LevelInfo || o.version {
					t.Errorf("log level %v, version %v; want INFO, false", o.logLevel, o.version)
				}
			},
		},
		{
			name: "node name from the environment",
			env:  env("NODE_NAME", "node-a"),
			check: func(t *testing.T, o options) {
				if o.agent.NodeName != "node-a" {
					t.Errorf("node name = %q, want node-a", o.agent.NodeName)
				}
			},
		},
		{
			name: "flag over environment",
			args: []string{"--node-name=node-b"},
			env:  env("NODE_NAME", "node-a"),
			check: func(t *testing.T, o options) {
				if o.agent.NodeName != "node-b" {
					t.Errorf("node name = %q, want node-b", o.agent.NodeName)
				}
			},
		},
		{
			name: "all set",
			args: []string{"--nri-socket", "/run/containerd/nri.sock", "--nri-plugin-name", "berth-test",
				"--nri-plugin-index", "0", "--metrics-bind-address", "127.0.0.1:1", "--health-probe-bind-address", "0",
				"--log-level", "debug", "--log-format", "json", "--kubeconfig", "/etc/kubeconfig"},
			check: func(t *testing.T, o options) {
				a := o.agent
				if a.NRI.SocketPath != "/run/containerd/nri.sock" || a.NRI.PluginName != "berth-test" ||
					*a.NRI.PluginIndex != 0 || a.MetricsBindAddress != "127.0.0.1:1" ||
					a.HealthProbeBindAddress != "0" || o.logLevel != slog.LevelDebug || o.logFormat != "json" ||
					o.kubeconfig != "/etc/kubeconfig" {
					t.Errorf("got %+v", o)
				}
			},
		},
		{name: "index too big", args: []string{"--nri-plugin-index=100"}, wantErr: "--nri-plugin-index 100: want 0 to 99"},
		{name: "index negative", args: []string{"--nri-plugin-index=-1"}, wantErr: "--nri-plugin-index -1: want 0 to 99"},
		{name: "index not a number", args: []string{"--nri-plugin-index=ten"},
			wantErr: `invalid value "ten" for flag -nri-plugin-index: parse error`},
		{name: "unknown level", args: []string{"--log-level=loud"}, wantErr: `--log-level "loud": want debug, info, warn or error`},
		{name: "offset level", args: []string{"--log-level=info+2"}, wantErr: `--log-level "info+2": want debug, info, warn or error`},
		{name: "unknown format", args: []string{"--log-format=yaml"}, wantErr: `--log-format "yaml": want text or json`},
		{name: "unknown flag", args: []string{"--nri-sock=/x"}, wantErr: "flag provided but not defined: -nri-sock"},
		{name: "stray argument", args: []string{"run", "now"}, wantErr: "unexpected arguments: run now"},
		{
			name: "file logs by default",
			check: func(t *testing.T, o options) {
				fl := o.agent.FileLogs
				if fl == nil || fl.Root != "/logs" || fl.Retention != 48*time.Hour || fl.Interval != 10*time.Minute ||
					fl.SizeLimit != 1<<30 || fl.MaxSizeLimit != 10<<30 {
					t.Errorf("file logs = %+v, want /logs, 48h, 10m, 1Gi, 10Gi", fl)
				}
			},
		},
		{
			name: "file logs set",
			args: []string{"--filelogs-root=/var/log/berth", "--filelogs-retention=30s", "--filelogs-retention-interval=5s",
				"--filelogs-size-limit=500Mi", "--filelogs-max-size-limit=2G"},
			check: func(t *testing.T, o options) {
				fl := o.agent.FileLogs
				if fl == nil || fl.Root != "/var/log/berth" || fl.Retention != 30*time.Second || fl.Interval != 5*time.Second ||
					fl.SizeLimit != 500<<20 || fl.MaxSizeLimit != 2e9 {
					t.Errorf("file logs = %+v", fl)
				}
			},
		},
		{
			name: "file logs off",
			args: []string{"--filelogs-root="},
			check: func(t *testing.T, o options) {
				if o.agent.FileLogs != nil {
					t.Errorf("file logs = %+v, want nil", o.agent.FileLogs)
				}
			},
		},
		{name: "relative file logs root", args: []string{"--filelogs-root=logs"},
			wantErr: `--filelogs-root "logs": want an absolute, clean path`},
		{name: "zero retention", args: []string{"--filelogs-retention=0s"}, wantErr: "--filelogs-retention 0s: want > 0"},
		{name: "negative interval", args: []string{"--filelogs-retention-interval=-1m"},
			wantErr: "--filelogs-retention-interval -1m0s: want > 0"},
		{name: "size limit not a quantity", args: []string{"--filelogs-size-limit=1GB"},
			wantErr: `invalid value "1GB" for flag -filelogs-size-limit: want a Kubernetes quantity, e.g. "500Mi" or "2Gi"`},
		{name: "zero size limit", args: []string{"--filelogs-size-limit=0"},
			wantErr: "--filelogs-size-limit 0: want a whole number of bytes above 0"},
		{name: "fractional maximum", args: []string{"--filelogs-max-size-limit=100m"},
			wantErr: "--filelogs-max-size-limit 100m: want a whole number of bytes above 0"},
		{name: "maximum below the limit", args: []string{"--filelogs-size-limit=2Gi", "--filelogs-max-size-limit=1Gi"},
			wantErr: "--filelogs-max-size-limit 1Gi: want at least --filelogs-size-limit, 2Gi"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := tt.env
			if getenv == nil {
				getenv = env()
			}
			o, err := parseFlags(tt.args, getenv, io.Discard)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.wantErr {
				t.Fatalf("err = %q, want %q", got, tt.wantErr)
			}
			if tt.check != nil {
				tt.check(t, o)
			}
		})
	}
}

func TestRun(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "version", args: []string{"--version"}, wantCode: 0,
			wantStdout: "berth-agent dev (commit dev, " + runtime.Version() + ")\n"},
		{name: "help", args: []string{"-h"}, wantCode: 0, wantStderr: "Usage of berth-agent:"},
		{name: "bad flag", args: []string{"--log-format=yaml"}, wantCode: 2,
			wantStderr: "berth-agent: --log-format \"yaml\": want text or json\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, func(string) string { return "" }, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tt.wantCode, stderr.String())
			}
			if stdout.String() != tt.wantStdout {
				t.Errorf("stdout %q, want %q", stdout.String(), tt.wantStdout)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tt.wantStderr)
			}
		})
	}
}
