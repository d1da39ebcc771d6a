package logdirs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-io/berth/agent/nriplugin"
	"github.com/berth-io/berth/test/containerdtest"
)

// BenchmarkContainerCreateStart measures CreateContainer+StartContainer
// through CRI on a containerd of its own, with the agent's NRI plugin (and
// the file-logs hook) connected and without any plugin: the same script,
// 200 containers each, in 40 rounds of 5 that alternate the order of the
// two modes (ABBA...) so that the disk's ups and downs hit both alike. Every container has
// KUBERNETES_FILELOGS set, so with the plugin each one gets its directories,
// metadata file and mount. With BERTH_BENCH_NO_HOOKS=1 the plugin runs
// without hooks (the NRI round trips alone). Run it once:
//
//	go test -run '^$' -bench BenchmarkContainerCreateStart -benchtime 1x ./agent/logdirs/
func BenchmarkContainerCreateStart(b *testing.B) {
	const rounds, perRound, warmup = 40, 5, 5
	ctrd := containerdtest.Start(b)
	root := filepath.Join(b.TempDir(), "logs")
	m, err := New(Config{Root: root, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	podID, podCfg, err := ctrd.RunPod(ctx, "bench", "bench-0", "uid-bench-0", nil)
	if err != nil {
		b.Fatal(err)
	}
	rt := ctrd.Runtime
	n := 0
	// one creates and starts a container and returns how long that took;
	// the container is left running (sleep) and listed in ids.
	var ids []string
	createTimes := map[string][]time.Duration{}
	one := func(mode string) time.Duration {
		n++
		cfg := ctrd.ContainerConfig(fmt.Sprintf("%s-%d", mode, n), 0, []string{"KUBERNETES_FILELOGS=/app/logs"},
			"/bin/sleep", "3600")
		start := time.Now()
		c, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: cfg, SandboxConfig: podCfg})
		if err != nil {
			b.Fatalf("CreateContainer: %v", err)
		}
		created := time.Since(start)
		if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.GetContainerId()}); err != nil {
			b.Fatalf("StartContainer: %v", err)
		}
		d := time.Since(start)
		createTimes[mode] = append(createTimes[mode], created)
		ids = append(ids, c.GetContainerId())
		return d
	}
	// clean stops and removes the containers of a round (not timed).
	clean := func() {
		for _, id := range ids {
			if _, err := rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 0}); err != nil {
				b.Fatalf("StopContainer: %v", err)
			}
			if _, err := rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
				b.Fatalf("RemoveContainer: %v", err)
			}
		}
		ids = ids[:0]
		// Let the removals' disk writes settle before the next batch.
		syscall.Sync()
		time.Sleep(500 * time.Millisecond)
	}
	hooks := benchHooks(m)
	var stopPlugin func()
	plugin := func(on bool) {
		if !on {
			if stopPlugin != nil {
				stopPlugin()
				stopPlugin = nil
				// Let containerd notice the closed connection.
				time.Sleep(200 * time.Millisecond)
			}
			return
		}
		p, err := nriplugin.New(nriplugin.Config{SocketPath: ctrd.NRISocket, Hooks: hooks,
			Logger: slog.New(slog.DiscardHandler), MinBackoff: 10 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		pctx, pcancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { _ = p.Start(pctx); close(done) }()
		for !p.Connected() {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond) // past Synchronize
		stopPlugin = func() { pcancel(); <-done }
	}

	samples := map[string][]time.Duration{}
	for _, mode := range []string{"base", "nri"} {
		plugin(mode == "nri")
		for range warmup {
			one("warmup")
		}
		clean()
		plugin(false)
	}
	b.ResetTimer()
	for r := range rounds {
		order := []string{"base", "nri"}
		if r%2 == 1 {
			order = []string{"nri", "base"}
		}
		for _, mode := range order {
			plugin(mode == "nri")
			for range perRound {
				samples[mode] = append(samples[mode], one(mode))
			}
			plugin(false)
			clean()
		}
	}
	b.StopTimer()
	if entries, _ := os.ReadDir(filepath.Join(root, "bench_bench-0_uid-bench-0")); len(entries) != rounds*perRound+warmup && os.Getenv("BERTH_BENCH_NO_HOOKS") == "" {
		b.Fatalf("the hook made %d container directories, want %d", len(entries), rounds*perRound+warmup)
	}
	base, nri := stats(samples["base"]), stats(samples["nri"])
	b.ReportMetric(ms(base.median), "base-median-ms")
	b.ReportMetric(ms(nri.median), "nri-median-ms")
	b.ReportMetric(ms(base.p99), "base-p99-ms")
	b.ReportMetric(ms(nri.p99), "nri-p99-ms")
	b.ReportMetric(float64(nri.median)/float64(base.median), "median-ratio")
	b.ReportMetric(float64(nri.p99)/float64(base.p99), "p99-ratio")
	b.ReportMetric(0, "ns/op")
	for _, mode := range []string{"base", "nri"} {
		s := slices.Clone(samples[mode])
		slices.Sort(s)
		b.Logf("%s: slowest 5: %v", mode, s[len(s)-5:])
	}
	b.ReportMetric(ms(stats(createTimes["base"]).median), "base-create-median-ms")
	b.ReportMetric(ms(stats(createTimes["nri"]).median), "nri-create-median-ms")
	if len(hooks) == 1 {
		th := hooks[0].(*timedHook)
		th.mu.Lock()
		hs := stats(th.times)
		th.mu.Unlock()
		b.ReportMetric(ms(hs.median), "hook-median-ms")
		b.ReportMetric(ms(hs.p99), "hook-p99-ms")
	}
	b.Logf("%d containers per mode: base median %.1f ms p99 %.1f ms; with the plugin median %.1f ms p99 %.1f ms",
		len(samples["base"]), ms(base.median), ms(base.p99), ms(nri.median), ms(nri.p99))
}

type latency struct{ median, p99 time.Duration }

// stats returns the median and the 99th percentile (nearest rank).
func stats(d []time.Duration) latency {
	s := slices.Clone(d)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(float64(len(s))*p+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return latency{median: rank(0.5), p99: rank(0.99)}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkRetentionPass measures one retention pass over 100,000 files
// (100 pods, 2 containers each, 500 files per container): "keep", where
// every file is young and the pass only looks (and sums disk use), and
// "expire", where every file is old and is removed. It reports wall time
// and the CPU time (user+system) of the process per pass.
//
//	go test -run '^$' -bench BenchmarkRetentionPass -benchtime 3x ./agent/logdirs/
func BenchmarkRetentionPass(b *testing.B) {
	const pods, ctrs, files = 100, 2, 500
	for _, expire := range []bool{false, true} {
		name := "keep"
		if expire {
			name = "expire"
		}
		b.Run(name, func(b *testing.B) {
			root := filepath.Join(b.TempDir(), "logs")
			m, err := New(Config{Root: root, Retention: time.Hour, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			var podList []*api.PodSandbox
			for p := range pods {
				podList = append(podList, &api.PodSandbox{Id: fmt.Sprint("s", p), Name: fmt.Sprint("pod-", p),
					Namespace: "bench", Uid: fmt.Sprint("uid-", p)})
			}
			m.Synchronize(context.Background(), podList, nil)
			fill := func() {
				old := time.Now().Add(-2 * time.Hour)
				for _, pod := range podList {
					for c := range ctrs {
						adj, err := m.CreateContainer(pod, &api.Container{Name: fmt.Sprint("c", c),
							Env: []string{"KUBERNETES_FILELOGS=/app/logs"}})
						if err != nil {
							b.Fatal(err)
						}
						dir := adj.GetMounts()[0].Source
						for f := range files {
							p := filepath.Join(dir, fmt.Sprintf("app-%d.log", f))
							if err := os.WriteFile(p, []byte("a log line\n"), 0o644); err != nil {
								b.Fatal(err)
							}
							if expire {
								if err := os.Chtimes(p, old, old); err != nil {
									b.Fatal(err)
								}
							}
						}
					}
				}
				// Files old enough to expire were written back long ago.
				syscall.Sync()
			}
			fill()
			var cpu time.Duration
			var st PassStats
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if expire && i > 0 {
					b.StopTimer()
					fill()
					b.StartTimer()
				}
				before := cpuTime(b)
				st = m.Pass(context.Background())
				cpu += cpuTime(b) - before
			}
			b.StopTimer()
			want := pods * ctrs * files
			if st.Entries != want || st.Errors != 0 || (expire && st.RemovedFiles != want) {
				b.Fatalf("pass = %+v, want %d entries", st, want)
			}
			b.ReportMetric(ms(cpu)/float64(b.N), "cpu-ms/op")
			b.ReportMetric(float64(want), "files")
		})
	}
}

// cpuTime returns the CPU time (user+system) the process used so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchHooks is the file-logs hook, or none with BERTH_BENCH_NO_HOOKS=1.
func benchHooks(m *Manager) []nriplugin.Hook {
	if os.Getenv("BERTH_BENCH_NO_HOOKS") != "" {
		return nil
	}
	return []nriplugin.Hook{&timedHook{Manager: m}}
}

// timedHook records how long the file-logs hook takes in CreateContainer.
type timedHook struct {
	*Manager
	mu    sync.Mutex
	times []time.Duration
}

func (h *timedHook) CreateContainer(pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error) {
	start := time.Now()
	adj, err := h.Manager.CreateContainer(pod, ctr)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.times = append(h.times, time.Since(start))
	return adj, err
}
