package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/test/procstat"
)

// annotation is what watchCost changes on the pods.
const annotation = "bench.berth.io/seq"

// watchCost measures what each berth-agent's cluster-wide cache costs per
// pod change: events pod updates (an annotation, as kubelet's status
// writes, each a whole pod to every watcher) with no cache watching, then
// with watchers caches as berth-agent's (cachetrim.Options; pods,
// ReplicaSets, claims), synced first, then with none, then with watchers
// caches whose pods are metadata only (PartialObjectMetadata: what an
// agent needs of the pods of other nodes), and none again. It prints the
// CPU time of kube-apiserver and of this process (where the caches decode
// the events) per update, and per update and watcher.
func watchCost(ctx context.Context, cfg *rest.Config, c client.Client, opts cache.Options, watchers, events int) error {
	var l corev1.PodList
	if err := c.List(ctx, &l, client.InNamespace("shop")); err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	if len(l.Items) == 0 {
		return errors.New("no pods in namespace shop")
	}
	pods := make([]string, len(l.Items))
	for i := range l.Items {
		pods[i] = l.Items[i].Name
	}
	l = corev1.PodList{}
	procs := procstat.Children()
	api := procs["kube-apiserver"]
	if api == 0 {
		return errors.New("no kube-apiserver child process")
	}
	type result struct {
		watchers  int
		metadata  bool
		api, self time.Duration
		wall      time.Duration
	}
	var results []result
	// No cache, the caches, no cache, metadata-only caches, no cache: the
	// baselines around each show the noise.
	for round, w := range []struct {
		n        int
		metadata bool
	}{{0, false}, {watchers, false}, {0, false}, {watchers, true}, {0, false}} {
		caches, stop, err := startCaches(ctx, cfg, opts, w.n, w.metadata)
		if err != nil {
			return err
		}
		a0, s0, start := procstat.CPU(api), procstat.CPU(os.Getpid()), time.Now()
		err = churn(ctx, c, pods, events, round)
		if err == nil {
			err = delivered(ctx, caches, pods[0], fmt.Sprint(round, "-done"), w.metadata)
		}
		r := result{watchers: w.n, metadata: w.metadata, api: procstat.CPU(api) - a0, self: procstat.CPU(os.Getpid()) - s0, wall: time.Since(start)}
		stop()
		if err != nil {
			return fmt.Errorf("%d watchers: %w", w.n, err)
		}
		results = append(results, r)
	}
	fmt.Printf("\n%d pod updates (one annotation each; 8 writers), with no cache watching, %d caches as berth-agent's, none, %d caches with metadata-only pods, none; CPU time per update:\n\n", events, watchers, watchers)
	fmt.Println("| watching caches | pods | wall | kube-apiserver | this process (writers and caches) |")
	fmt.Println("|---|---|---|---|---|")
	per := func(d time.Duration) string {
		return fmt.Sprintf("%.0f µs", float64(d.Microseconds())/float64(events))
	}
	for _, r := range results {
		kind := "whole (trimmed in the cache)"
		switch {
		case r.watchers == 0:
			kind = "-"
		case r.metadata:
			kind = "metadata only"
		}
		fmt.Printf("| %d | %s | %s | %s | %s |\n", r.watchers, kind, r.wall.Round(time.Millisecond), per(r.api), per(r.self))
	}
	perWatcher := func(with, base0, base1 time.Duration) string {
		return fmt.Sprintf("%.1f µs", (float64(with.Microseconds())-float64(base0.Microseconds()+base1.Microseconds())/2)/float64(events)/float64(watchers))
	}
	for _, i := range []int{1, 3} {
		w, name := results[i], "as berth-agent's"
		if w.metadata {
			name = "with metadata-only pods"
		}
		fmt.Printf("\nEach watching cache %s added, per pod update (over the mean of the baselines before and after): kube-apiserver %s, its own process %s.\n",
			name, perWatcher(w.api, results[i-1].api, results[i+1].api), perWatcher(w.self, results[i-1].self, results[i+1].self))
	}
	return nil
}

// startCaches starts n caches of pods (metadata only if metadata),
// ReplicaSets and claims and waits until they are synced; stop stops them.
func startCaches(ctx context.Context, cfg *rest.Config, opts cache.Options, n int, metadata bool) ([]cache.Cache, func(), error) {
	cctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop := func() { cancel(); wg.Wait() }
	var caches []cache.Cache
	for range n {
		ca, err := cache.New(cfg, opts)
		if err != nil {
			stop()
			return nil, nil, err
		}
		wg.Go(func() { _ = ca.Start(cctx) })
		for _, o := range []client.Object{podObject(metadata), &appsv1.ReplicaSet{}, &v1alpha1.IPClaim{}} {
			if _, err := ca.GetInformer(ctx, o); err != nil {
				stop()
				return nil, nil, err
			}
		}
		caches = append(caches, ca)
	}
	for _, ca := range caches {
		if !ca.WaitForCacheSync(ctx) {
			stop()
			return nil, nil, errors.New("a cache did not sync")
		}
	}
	return caches, stop, nil
}

// podObject is the object a cache's pod informer is for: a whole pod, or
// its metadata (a metadata informer).
func podObject(metadata bool) client.Object {
	if metadata {
		m := &metav1.PartialObjectMetadata{}
		m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Pod"))
		return m
	}
	return &corev1.Pod{}
}

// churn patches the annotation of pods round-robin, events times, with 8
// writers, then sets it to "<round>-done" on the first pod.
func churn(ctx context.Context, c client.Client, pods []string, events, round int) error {
	patch := func(i int, v string) error {
		p := &corev1.Pod{}
		p.Namespace, p.Name = "shop", pods[i%len(pods)]
		body := fmt.Appendf(nil, `{"metadata":{"annotations":{%q:%q}}}`, annotation, v)
		return c.Patch(ctx, p, client.RawPatch(types.MergePatchType, body))
	}
	if err := parallel(ctx, 8, events, func(_ context.Context, i int) error { return patch(i, fmt.Sprint(round, "-", i)) }); err != nil {
		return err
	}
	return patch(0, fmt.Sprint(round, "-done"))
}

// delivered waits until every cache shows pod with the annotation v (in
// its metadata-only informer if metadata): a watch delivers a kind's
// events in order, so the caches then have every update before it.
func delivered(ctx context.Context, caches []cache.Cache, pod, v string, metadata bool) error {
	deadline := time.Now().Add(2 * time.Minute)
	for _, ca := range caches {
		for {
			p := podObject(metadata)
			if err := ca.Get(ctx, client.ObjectKey{Namespace: "shop", Name: pod}, p); err != nil {
				return err
			}
			if p.GetAnnotations()[annotation] == v {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("a cache did not see the last pod update in 2 minutes")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}
