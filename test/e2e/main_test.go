//go:build e2e

// Package e2e runs Berth's end-to-end suite against the local cluster that
// `make up` starts (KUBECONFIG=_output/kubeconfig). `make e2e` runs it.
package e2e

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
)

const berthNamespace = "berth-system"

var (
	client    kubernetes.Interface
	berth     crclient.Client // with Berth's types
	testImage string
	kubectl   string
	clusterSh string
)

func TestMain(m *testing.M) {
	if err := setup(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e setup: %v\n", err)
		os.Exit(2)
	}
	code := m.Run()
	// A Berth pod that restarted during the suite is a failure, whatever passed.
	if err := checkNoRestarts(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		code = 1
	}
	os.Exit(code)
}

func setup() error {
	kubeconfig := os.Getenv("KUBECONFIG")
	if kubeconfig == "" {
		return fmt.Errorf("KUBECONFIG is not set: run `make e2e`")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("load %s: %w", kubeconfig, err)
	}
	if client, err = kubernetes.NewForConfig(cfg); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	if berth, err = crclient.New(cfg, crclient.Options{Scheme: scheme}); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	for name, v := range map[string]*string{"BERTH_TEST_IMAGE": &testImage, "BERTH_KUBECTL": &kubectl, "BERTH_CLUSTER_SH": &clusterSh} {
		if *v = os.Getenv(name); *v == "" {
			return fmt.Errorf("%s is not set: run `make e2e`", name)
		}
	}
	baselineRestarts, err = berthRestarts()
	return err
}

// Restarts of Berth's containers, by "pod/container": those before the
// suite (a cluster reused from an earlier run), and those a test caused on
// purpose.
var (
	restartsMu       sync.Mutex
	baselineRestarts map[string]int32
	expectedRestarts = map[string]int32{}
)

func berthRestarts() (map[string]int32, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods, err := client.CoreV1().Pods(berthNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list Berth pods: %w", err)
	}
	m := map[string]int32{}
	for _, p := range pods.Items {
		for _, cs := range p.Status.ContainerStatuses {
			m[p.Name+"/"+cs.Name] = cs.RestartCount
		}
	}
	return m, nil
}

// expectAgentRestart allows one more restart of the agent pod's container,
// which the calling test is about to kill.
func expectAgentRestart(t *testing.T, agent *corev1.Pod) {
	t.Helper()
	restartsMu.Lock()
	defer restartsMu.Unlock()
	expectedRestarts[agent.Name+"/berth-agent"]++
}

func checkNoRestarts() error {
	now, err := berthRestarts()
	if err != nil {
		return err
	}
	restartsMu.Lock()
	defer restartsMu.Unlock()
	for k, n := range now {
		if n > baselineRestarts[k]+expectedRestarts[k] {
			return fmt.Errorf("Berth container %s restarted %d times during the suite (%d expected):\n%s",
				k, n-baselineRestarts[k], expectedRestarts[k], describe(berthNamespace, "pods"))
		}
	}
	return nil
}

// podReady reports whether p is Running with every container ready.
func podReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
