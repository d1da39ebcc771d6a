// Package envtest starts a real kube-apiserver and etcd for integration
// tests, from the binaries the local-cluster harness builds and caches
// (test/cluster/build.sh). It is the one place tests get an API server from.
package envtest

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// AssetsEnv names the directory holding etcd, kube-apiserver and kubectl, as
// controller-runtime's envtest reads it. `make test` sets it.
const AssetsEnv = "KUBEBUILDER_ASSETS"

// Options tunes one API server.
type Options struct {
	// CRDDirectoryPaths are installed before Start returns.
	CRDDirectoryPaths []string
}

// Start runs a kube-apiserver and etcd for the test and stops them in
// t.Cleanup. It fails the test (it does not skip) when the binaries are
// missing: run `make test`, which builds and points to them.
func Start(t testing.TB, opts ...Options) *rest.Config {
	t.Helper()
	assets := os.Getenv(AssetsEnv)
	if assets == "" {
		t.Fatalf("%s is not set: run the tests through `make test`, or export %s=$(make -s print-envtest-assets)", AssetsEnv, AssetsEnv)
	}
	for _, bin := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			t.Fatalf("%s=%s: %v (run `make envtest-assets`)", AssetsEnv, assets, err)
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		ErrorIfCRDPathMissing: true,
	}
	for _, o := range opts {
		env.CRDDirectoryPaths = append(env.CRDDirectoryPaths, o.CRDDirectoryPaths...)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start kube-apiserver and etcd from %s: %v", assets, err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop kube-apiserver and etcd: %v", err)
		}
	})
	return cfg
}

// ServerVersion is the git version of the API server at cfg ("?" if it
// does not say), for benchmark output.
func ServerVersion(cfg *rest.Config) string {
	d, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return "?"
	}
	v, err := d.ServerVersion()
	if err != nil {
		return "?"
	}
	return v.GitVersion
}
