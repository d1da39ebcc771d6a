//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// namespace makes a namespace for one test and deletes it afterwards.
func namespace(t *testing.T, prefix string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-", Labels: map[string]string{"berth.io/e2e": "true"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		if err := client.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete namespace %s: %v", ns.Name, err)
		}
		// The namespace takes no new pods now: delete its pods, and end
		// those that would stop for a long grace period.
		if err := client.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Logf("delete the pods of %s: %v", ns.Name, err)
		}
		if err := endTerminating(ctx, ns.Name); err != nil {
			t.Logf("the pods of %s did not go within a minute: %v", ns.Name, err)
		}
	})
	return ns.Name
}

// stopFile ends the process of appSpec's pods, which ignores SIGTERM.
const stopFile = "/tmp/stop"

// endTerminating ends the terminating pods of ns whose grace period is
// longer than a few seconds (appSpec's), touching stopFile in them until
// they are gone (a container that exits before kubelet has seen its pod's
// deletion is restarted, without the file), and waits until no pod of ns
// terminates. A forced delete would not do: it removes the pod objects,
// but containerd's stop of the containers goes on for the grace period,
// and an agent restart meanwhile (TestIPAM_AgentKilledMidAllocation) would
// hold the node's new pods until it ends (agent/README.md).
func endTerminating(ctx context.Context, ns string) error {
	return wait.PollUntilContextTimeout(ctx, 2*time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		left := 0
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil {
				continue
			}
			left++
			if g := p.Spec.TerminationGracePeriodSeconds; g != nil && *g > 2 {
				_, _ = kubectlRun(ctx, "-n", ns, "exec", p.Name, "--", "touch", stopFile) // gone meanwhile: fine
			}
		}
		return left == 0, nil
	})
}

// testPod is a pod of the test image running args.
func testPod(name string, labels map[string]string, args ...string) *corev1.Pod {
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:            "main",
				Image:           testImage,
				ImagePullPolicy: corev1.PullNever,
				Command:         args,
			}},
		},
	}
}

// createPodReady creates pod in ns and waits, on a watch, until it is Ready.
// On timeout it fails with the pod's status and events.
func createPodReady(t *testing.T, ns string, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, pod.Name, err)
	}
	got, err := waitPod(ctx, ns, pod.Name, podReady)
	if err != nil {
		t.Fatalf("pod %s/%s not ready: %v\n%s", ns, pod.Name, err, describe(ns, "pod/"+pod.Name))
	}
	return got
}

// waitPod watches one pod until cond holds.
func waitPod(ctx context.Context, ns, name string, cond func(*corev1.Pod) bool) (*corev1.Pod, error) {
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return client.CoreV1().Pods(ns).List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return client.CoreV1().Pods(ns).Watch(ctx, o)
		},
	}
	ev, err := watchtools.UntilWithSync(ctx, lw, &corev1.Pod{}, nil, func(e watch.Event) (bool, error) {
		p, ok := e.Object.(*corev1.Pod)
		return ok && cond(p), nil
	})
	if err != nil {
		return nil, err
	}
	return ev.Object.(*corev1.Pod), nil
}

// run runs a command with a deadline and returns its stdout; the error holds stderr.
func run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// kubectlRun runs the cluster's kubectl.
func kubectlRun(ctx context.Context, args ...string) (string, error) {
	return run(ctx, kubectl, args...)
}

// describe returns `kubectl describe` and the namespace's events, for failure messages.
func describe(ns, obj string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := kubectlRun(ctx, "-n", ns, "describe", obj)
	if err != nil {
		d += err.Error()
	}
	ev, _ := kubectlRun(ctx, "-n", ns, "get", "events", "--sort-by=.lastTimestamp")
	return d + "\n" + ev
}
