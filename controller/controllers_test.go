package controller_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/controller"
	"github.com/berth-io/berth/test/envtest"
)

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestRun runs berth-controller with the ClusterRole generated into
// deploy/base, as its ServiceAccount: it elects itself, counts a pool and
// reserves the claim of a vanished pod.
func TestRun(t *testing.T) {
	admin := envtest.Start(t, envtest.Options{CRDDirectoryPaths: []string{"../deploy/base/crds"}})
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = v1alpha1.AddToScheme(s)
	c, err := client.New(admin, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	f, err := os.Open(filepath.Join("..", "deploy", "base", "controller", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var role rbacv1.ClusterRole
	if err := yaml.NewYAMLOrJSONDecoder(f, 4096).Decode(&role); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	for _, o := range []client.Object{&role, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "berth-system"}},
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "berth-controller"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "berth-controller"},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "berth-controller", Namespace: "berth-system"}}}} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	cfg := rest.CopyConfig(admin)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:berth-system:berth-controller"}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	probe := freePort(t)
	go func() {
		done <- controller.Run(rctx, controller.Config{RestConfig: cfg, MetricsBindAddress: "0", HealthProbeBindAddress: probe,
			LeaderElection: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	// Run sets process-wide loggers first; wait until it serves probes.
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get("http://" + probe + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatal("berth-controller does not serve /healthz")
		}
	}
	if err := c.Create(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.7.0.0/29"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: "p-10-7-0-1"}, Spec: v1alpha1.IPClaimSpec{Pool: "p", Address: "10.7.0.1",
		State: v1alpha1.ClaimBound, Pod: v1alpha1.PodRef{Namespace: "ns", Name: "gone", UID: "u"},
		App: &v1alpha1.App{Kind: v1alpha1.AppGroup, Namespace: "ns", Name: "g"}}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var p v1alpha1.IPPool
		var cl v1alpha1.IPClaim
		_ = c.Get(ctx, client.ObjectKey{Name: "p"}, &p)
		_ = c.Get(ctx, client.ObjectKey{Name: "p-10-7-0-1"}, &cl)
		if p.Status.Size == 6 && p.Status.Reserved == 1 && cl.Spec.State == v1alpha1.ClaimReserved {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool status %+v, claim %s", p.Status, cl.Spec.State)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
