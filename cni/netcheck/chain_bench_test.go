package netcheck

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berth-io/berth/test/netnstest"
)

// The benchmarks here drive the real binaries the way a runtime does:
// libcni (containerd's CNI library) execs bridge + host-local (the CNI
// reference plugins, from BERTH_CNI_BIN or the
// harness's cache) and a freshly built berth-netcheck with CNI_* variables
// and the configuration on stdin, in network namespaces made here. The
// runtime's side (where the bridge lives) is a namespace too, so nothing
// touches the host's network. test/bench/netcheck.sh runs them.

// cniBin is the directory of the CNI reference plugins.
func cniBin(tb testing.TB) string {
	tb.Helper()
	if d := os.Getenv("BERTH_CNI_BIN"); d != "" {
		return d
	}
	v := ""
	f, err := os.Open("../../test/cluster/versions.sh")
	if err != nil {
		tb.Fatalf("set BERTH_CNI_BIN: %v", err)
	}
	defer f.Close()
	for sc := bufio.NewScanner(f); sc.Scan(); {
		if rest, ok := strings.CutPrefix(sc.Text(), "CNI_PLUGINS_VERSION="); ok {
			v = rest
		}
	}
	cache := os.Getenv("BERTH_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, _ := os.UserHomeDir()
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, "berth")
	}
	d := filepath.Join(cache, "cni-plugins-"+v, "bin")
	if _, err := os.Stat(filepath.Join(d, "bridge")); err != nil {
		tb.Fatalf("no CNI reference plugins in %s (run test/cluster/build.sh cni_plugins or set BERTH_CNI_BIN): %v", d, err)
	}
	return d
}

var (
	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

// netcheckBin builds cmd/berth-netcheck once per test binary.
func netcheckBin(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		builtDir, buildErr = os.MkdirTemp("", "berth-netcheck-bench-")
		if buildErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", builtDir, "./cmd/berth-netcheck").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/berth-netcheck: %w: %s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return builtDir
}

// TestMain removes the binary the benchmarks built, and puts /run/netns
// back (netnstest).
func TestMain(m *testing.M) {
	code := netnstest.Run(m)
	if builtDir != "" {
		_ = os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// timedExec is libcni's exec that also records how long berth-netcheck's
// ADDs took.
type timedExec struct {
	invoke.Exec
	mu       sync.Mutex
	netcheck []time.Duration
}

func (e *timedExec) ExecPlugin(ctx context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	start := time.Now()
	out, err := e.Exec.ExecPlugin(ctx, path, stdin, environ)
	if filepath.Base(path) == "berth-netcheck" && slices.Contains(environ, "CNI_COMMAND=ADD") {
		e.mu.Lock()
		e.netcheck = append(e.netcheck, time.Since(start))
		e.mu.Unlock()
	}
	return out, err
}

// network is one conflist run from a runtime namespace into pod namespaces.
type network struct {
	tb    testing.TB
	host  ns.NetNS // the runtime's side: the bridge lives here
	cni   *libcni.CNIConfig
	exec  *timedExec
	list  *libcni.NetworkConfigList
	pod   ns.NetNS
	runID int
}

// bridgeConf is a bridge + host-local plugin configuration.
func bridgeConf(bridge string, isGateway bool, dataDir string, ranges ...string) string {
	return fmt.Sprintf(`{"type": "bridge", "bridge": %q, "isGateway": %t, "ipMasq": false, "hairpinMode": true,
		"ipam": {"type": "host-local", "dataDir": %q, "ranges": [%s], "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}`,
		bridge, isGateway, dataDir, strings.Join(ranges, ", "))
}

// newNetwork makes a conflist named name of plugins (JSON objects), to be
// run from host into a pod namespace of its own.
func newNetwork(tb testing.TB, host ns.NetNS, name string, plugins ...string) *network {
	tb.Helper()
	list, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [%s]}`,
		name, strings.Join(plugins, ", "))))
	if err != nil {
		tb.Fatal(err)
	}
	e := &timedExec{Exec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}}
	n := &network{
		tb:   tb,
		host: host,
		exec: e,
		list: list,
		cni:  libcni.NewCNIConfigWithCacheDir([]string{netcheckBin(tb), cniBin(tb)}, tb.TempDir(), e),
	}
	n.pod, _ = newNetNS(tb, nsPrefix(tb)+"-"+name)
	return n
}

func (n *network) rt() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: fmt.Sprintf("bench-%d", n.runID), NetNS: n.pod.Path(), IfName: "eth0"}
}

// add runs ADD of the whole list from the runtime's namespace and returns
// how long it took.
func (n *network) add() (time.Duration, error) {
	n.runID++
	var took time.Duration
	var addErr error
	err := n.host.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		start := time.Now()
		_, addErr = n.cni.AddNetworkList(ctx, n.list, n.rt())
		took = time.Since(start)
		return nil
	})
	if err != nil {
		n.tb.Fatal(err)
	}
	return took, addErr
}

// del runs DEL, as a runtime does after every ADD, failed or not.
func (n *network) del() {
	err := n.host.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return n.cni.DelNetworkList(ctx, n.list, n.rt())
	})
	if err != nil {
		n.tb.Fatalf("DEL: %v", err)
	}
}

// quantile of sorted durations, nearest rank.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkChainADD: extra ADD latency of berth-netcheck (default
// settings) on a healthy network. Each iteration runs ADD + DEL of
// bridge + host-local without the check and then with it, alternating, so
// both see the same machine; the report has both chains' median and p99,
// their difference, and berth-netcheck's own exec time.
func BenchmarkChainADD(b *testing.B) {
	for _, tc := range []struct {
		name   string
		ranges []string
	}{
		{name: "ipv4", ranges: []string{`[{"subnet": "10.99.0.0/24"}]`}},
		{name: "dual-stack", ranges: []string{`[{"subnet": "10.99.0.0/24"}]`, `[{"subnet": "fd00:99::/64"}]`}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			requireRoot(b)
			host, _ := newNetNS(b, nsPrefix(b)+"-host")
			bridge := bridgeConf("bnc0", true, b.TempDir(), tc.ranges...)
			without := newNetwork(b, host, "without", bridge)
			with := newNetwork(b, host, "with", bridge, `{"type": "berth-netcheck"}`)
			// Warm up: the first ADD makes the bridge, whose IPv6 gateway
			// address answers only after the kernel's duplicate address
			// detection (a second or two).
			deadline := time.Now().Add(30 * time.Second)
			for {
				_, err := with.add()
				with.del()
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("warm-up ADD with berth-netcheck: %v", err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			_, _ = without.add() // warm-up
			without.del()
			with.exec.netcheck = nil

			var tWithout, tWith []time.Duration
			b.ResetTimer()
			for range b.N {
				d, err := without.add()
				if err != nil {
					b.Fatalf("ADD without berth-netcheck: %v", err)
				}
				without.del()
				tWithout = append(tWithout, d)
				d, err = with.add()
				if err != nil {
					b.Fatalf("ADD with berth-netcheck: %v", err)
				}
				with.del()
				tWith = append(tWith, d)
			}
			b.StopTimer()
			own := slices.Clone(with.exec.netcheck)
			for _, s := range [][]time.Duration{tWithout, tWith, own} {
				slices.Sort(s)
			}
			b.ReportMetric(ms(quantile(tWithout, 0.5)), "without-p50-ms")
			b.ReportMetric(ms(quantile(tWithout, 0.99)), "without-p99-ms")
			b.ReportMetric(ms(quantile(tWith, 0.5)), "with-p50-ms")
			b.ReportMetric(ms(quantile(tWith, 0.99)), "with-p99-ms")
			b.ReportMetric(ms(quantile(tWith, 0.5)-quantile(tWithout, 0.5)), "extra-p50-ms")
			b.ReportMetric(ms(quantile(tWith, 0.99)-quantile(tWithout, 0.99)), "extra-p99-ms")
			b.ReportMetric(ms(quantile(own, 0.5)), "netcheck-p50-ms")
			b.ReportMetric(ms(quantile(own, 0.99)), "netcheck-p99-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkDetect: detection rate. Each iteration is one ADD (+ DEL) that
// must fail with the expected error: a namespace on the bridge already
// holds the only address host-local hands out, or the gateway host-local
// names does not exist.
func BenchmarkDetect(b *testing.B) {
	for _, tc := range []struct {
		name     string
		ranges   []string
		squatter []string // addresses held by another host on the bridge
		gateway  []string // addresses of the live gateway on the bridge
		wantCode uint
		want     string // with %s for the squatter's MAC
	}{
		{
			name:     "conflict-ipv4",
			ranges:   []string{`[{"subnet": "10.99.1.0/24", "rangeStart": "10.99.1.50", "rangeEnd": "10.99.1.50", "gateway": "10.99.1.1"}]`},
			squatter: []string{"10.99.1.50/24"},
			gateway:  []string{"10.99.1.1/24"},
			wantCode: CodeAddressInUse,
			want:     "IP 10.99.1.50 on eth0 is already in use by %s",
		},
		{
			name: "conflict-ipv6",
			ranges: []string{`[{"subnet": "10.99.1.0/24", "gateway": "10.99.1.1"}]`,
				`[{"subnet": "fd00:99:1::/64", "rangeStart": "fd00:99:1::50", "rangeEnd": "fd00:99:1::50", "gateway": "fd00:99:1::1"}]`},
			squatter: []string{"fd00:99:1::50/64"},
			gateway:  []string{"10.99.1.1/24", "fd00:99:1::1/64"},
			wantCode: CodeAddressInUse,
			want:     "IP fd00:99:1::50 on eth0 is already in use by %s",
		},
		{
			name:     "dead-gateway-ipv4",
			ranges:   []string{`[{"subnet": "10.99.1.0/24", "gateway": "10.99.1.254"}]`},
			wantCode: CodeGatewayUnreachable,
			want:     "gateway 10.99.1.254 unreachable from eth0 after 3 tries (ARP: no reply)",
		},
		{
			name: "dead-gateway-ipv6",
			ranges: []string{`[{"subnet": "10.99.1.0/24", "gateway": "10.99.1.1"}]`,
				`[{"subnet": "fd00:99:1::/64", "rangeStart": "fd00:99:1::10", "gateway": "fd00:99:1::fe"}]`},
			gateway:  []string{"10.99.1.1/24", "fd00:99:1::1/64"},
			wantCode: CodeGatewayUnreachable,
			want:     "gateway fd00:99:1::fe unreachable from eth0 after 3 tries (NDP: no reply)",
		},
	} {
		b.Run(tc.name, func(b *testing.B) {
			requireRoot(b)
			// The runtime's namespace, with the bridge made beforehand so the
			// squatter and the gateway can join it.
			s := newSegment(b)
			var squatter *node
			if tc.squatter != nil {
				squatter = s.attach("squat", false, tc.squatter...)
			}
			if tc.gateway != nil {
				s.attach("gw", false, tc.gateway...)
			}
			with := newNetwork(b, s.ns, "with", bridgeConf("br0", false, b.TempDir(), tc.ranges...), `{"type": "berth-netcheck"}`)
			want := tc.want
			if squatter != nil {
				want = fmt.Sprintf(tc.want, squatter.mac)
			}
			detected := 0
			var lastErr error
			b.ResetTimer()
			for range b.N {
				_, err := with.add()
				with.del()
				var e *types.Error
				if errors.As(err, &e) && e.Code == tc.wantCode && e.Msg == want {
					detected++
				} else {
					lastErr = err
				}
			}
			b.StopTimer()
			b.ReportMetric(100*float64(detected)/float64(b.N), "detected-%")
			b.ReportMetric(float64(b.N), "runs")
			b.ReportMetric(0, "ns/op")
			if detected != b.N {
				b.Errorf("detected %d of %d; last miss: %v", detected, b.N, lastErr)
			}
		})
	}
}
