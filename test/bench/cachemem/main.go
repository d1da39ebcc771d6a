// Command cachemem measures the heap an informer cache of Berth's holds for
// a cluster's pods, ReplicaSets and IPClaims: it fills one real
// kube-apiserver + etcd (the envtest binaries) with -pods running
// Deployment pods (status as kubelet writes it), one ReplicaSet per
// -pods-per-rs pods and one Bound claim per pod, then starts a cache of
// these three kinds as berth-agent did before internal/cachetrim (only
// managedFields stripped) and as it does now (cachetrim.Options), one
// after the other in this process, and prints the heap each holds once
// synced (after a GC): informers, indexes and objects together.
//
//	KUBEBUILDER_ASSETS=$(make -s print-envtest-assets) go run ./test/bench/cachemem -pods 10000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/cachetrim"
)

func main() {
	ctrllog.SetLogger(logr.Discard())
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "cachemem:", err)
		os.Exit(1)
	}
}

func run() error {
	pods := flag.Int("pods", 10000, "running pods (and as many claims)")
	perRS := flag.Int("pods-per-rs", 3, "pods per ReplicaSet")
	crds := flag.String("crds", "deploy/base/crds", "Berth's CRDs")
	flag.Parse()
	if *pods < 1 || *perRS < 1 {
		return errors.New("-pods and -pods-per-rs must be at least 1")
	}
	env := &envtest.Environment{BinaryAssetsDirectory: os.Getenv("KUBEBUILDER_ASSETS"), CRDDirectoryPaths: []string{*crds}, ErrorIfCRDPathMissing: true}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("start kube-apiserver: %w", err)
	}
	defer func() { _ = env.Stop() }()
	cfg.QPS, cfg.Burst = -1, 0
	scheme := kruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	start := time.Now()
	if err := fill(ctx, c, *pods, *perRS); err != nil {
		return err
	}
	rss := (*pods + *perRS - 1) / *perRS
	fmt.Printf("%d pods, %d ReplicaSets, %d IPClaims created in %s; kube-apiserver %s\n\n", *pods, rss, *pods, time.Since(start).Round(time.Second), version(cfg))
	fmt.Println("| cache | heap once synced | per pod (with its claim and 1/" + fmt.Sprint(*perRS) + " ReplicaSet) | vs. managedFields stripped |")
	fmt.Println("|---|---|---|---|")
	var base float64
	for _, tc := range []struct {
		name string
		opts cache.Options
	}{
		{"managedFields stripped (berth-agent before internal/cachetrim)", cache.Options{Scheme: scheme, DefaultTransform: cache.TransformStripManagedFields()}},
		{"cachetrim.Options (berth-agent and berth-controller now)", cachetrim.Options(cache.Options{Scheme: scheme})},
	} {
		heap, err := synced(ctx, cfg, tc.opts, *pods)
		if err != nil {
			return fmt.Errorf("%s: %w", tc.name, err)
		}
		if base == 0 {
			base = heap
		}
		fmt.Printf("| %s | %.1f MB | %.1f KB | %.2fx |\n", tc.name, heap/1e6, heap/float64(*pods)/1e3, heap/base)
	}
	return nil
}

// synced starts a cache of pods, ReplicaSets and IPClaims, waits until it
// holds every pod, and returns the heap it added (after a GC). The cache
// is stopped and dropped before it returns.
func synced(ctx context.Context, cfg *rest.Config, opts cache.Options, pods int) (float64, error) {
	before := heap()
	ca, err := cache.New(cfg, opts)
	if err != nil {
		return 0, err
	}
	cctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = ca.Start(cctx); close(done) }()
	defer func() { stop(); <-done; runtime.GC() }()
	for _, o := range []client.Object{&corev1.Pod{}, &appsv1.ReplicaSet{}, &v1alpha1.IPClaim{}} {
		if _, err := ca.GetInformer(ctx, o); err != nil {
			return 0, err
		}
	}
	if !ca.WaitForCacheSync(ctx) {
		return 0, errors.New("cache did not sync")
	}
	var l corev1.PodList
	if err := ca.List(ctx, &l); err != nil {
		return 0, fmt.Errorf("list pods: %w", err)
	}
	if len(l.Items) != pods {
		return 0, fmt.Errorf("cache lists %d pods, want %d", len(l.Items), pods)
	}
	l = corev1.PodList{}
	after := heap()
	runtime.KeepAlive(ca)
	return after - before, nil
}

func heap() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc)
}

// fill creates the objects with 16 writers.
func fill(ctx context.Context, c client.Client, pods, perRS int) error {
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}); err != nil {
		return err
	}
	jobs := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range jobs {
				if err := create(ctx, c, i, perRS); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	var err error
loop:
	for i := range pods {
		select {
		case jobs <- i:
		case err = <-errs:
			break loop
		}
	}
	close(jobs)
	wg.Wait()
	if err == nil && len(errs) > 0 {
		err = <-errs
	}
	return err
}

// create makes pod i (running, with kubelet's status), its claim and, for
// the first pod of each group of perRS, their ReplicaSet.
func create(ctx context.Context, c client.Client, i, perRS int) error {
	rsName := fmt.Sprintf("web%d-7d9c5b6f4", i/perRS)
	labels := map[string]string{"app": fmt.Sprintf("web%d", i/perRS), "pod-template-hash": "7d9c5b6f4"}
	spec := podSpec()
	if i%perRS == 0 {
		rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: rsName, Labels: labels,
			Annotations:     map[string]string{"deployment.kubernetes.io/desired-replicas": fmt.Sprint(perRS), "deployment.kubernetes.io/max-replicas": fmt.Sprint(perRS + 1), "deployment.kubernetes.io/revision": "2"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: labels["app"], UID: "d-uid", Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
			Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To(int32(perRS)), Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec}}}
		if err := c.Create(ctx, rs); err != nil {
			return fmt.Errorf("replicaset %s: %w", rsName, err)
		}
	}
	spec.NodeName = fmt.Sprintf("node-%d", i%100)
	ip := fmt.Sprintf("10.%d.%d.%d", 128+i/65536, i/256%256, i%256)
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: fmt.Sprintf("%s-%05d", rsName, i), GenerateName: rsName + "-", Labels: labels,
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rsName, UID: "rs-uid", Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
		Spec: spec}
	if err := c.Create(ctx, p); err != nil {
		return fmt.Errorf("pod %d: %w", i, err)
	}
	now := metav1.Now()
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, HostIP: "192.0.2.10", HostIPs: []corev1.HostIP{{IP: "192.0.2.10"}},
		PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, StartTime: &now, QOSClass: corev1.PodQOSBurstable,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now}, {Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now}, {Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "web", Ready: true, Started: ptr.To(true), Image: "registry.example/shop/web:1.4.2",
			ImageID:     "registry.example/shop/web@sha256:4c1e0f5d2b8a9e3f7c6d5b4a3928171605f4e3d2c1b0a9f8e7d6c5b4a3928171",
			ContainerID: fmt.Sprintf("containerd://%064x", i),
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}}}
	if err := c.Status().Update(ctx, p); err != nil {
		return fmt.Errorf("pod %d status: %w", i, err)
	}
	claim := &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pods-%05d", i),
		Labels: map[string]string{v1alpha1.LabelPool: "pods", v1alpha1.LabelNode: spec.NodeName, v1alpha1.LabelPodUID: string(p.UID)}},
		Spec: v1alpha1.IPClaimSpec{Pool: "pods", Address: ip, App: &v1alpha1.App{Kind: v1alpha1.AppDeployment, Namespace: "shop", Name: labels["app"]},
			Pod: v1alpha1.PodRef{Namespace: "shop", Name: p.Name, UID: p.UID}, ContainerID: fmt.Sprintf("%064x", i), Interface: "eth0",
			Node: spec.NodeName, State: v1alpha1.ClaimBound}}
	if err := c.Create(ctx, claim); err != nil {
		return fmt.Errorf("claim %d: %w", i, err)
	}
	return nil
}

// podSpec is a Deployment pod's spec as the API server stores it.
func podSpec() corev1.PodSpec {
	return corev1.PodSpec{ServiceAccountName: "default", RestartPolicy: corev1.RestartPolicyAlways, DNSPolicy: corev1.DNSClusterFirst,
		TerminationGracePeriodSeconds: ptr.To[int64](30), SchedulerName: "default-scheduler", EnableServiceLinks: ptr.To(true),
		Containers: []corev1.Container{{Name: "web", Image: "registry.example/shop/web:1.4.2", ImagePullPolicy: corev1.PullIfNotPresent,
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
			Env: []corev1.EnvVar{{Name: "KUBERNETES_FILELOGS", Value: "/var/log/web"}, {Name: "LOG_LEVEL", Value: "info"},
				{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}}},
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
				Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}},
			TerminationMessagePath: "/dev/termination-log", TerminationMessagePolicy: corev1.TerminationMessageReadFile}},
		Volumes: []corev1.Volume{{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{ExpirationSeconds: ptr.To[int64](3607), Path: "token"}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}}},
			DefaultMode: ptr.To[int32](420)}}}},
		Tolerations: []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](300)},
			{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](300)}}}
}

func version(cfg *rest.Config) string {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return "?"
	}
	v, err := dc.ServerVersion()
	if err != nil {
		return "?"
	}
	return v.GitVersion
}
