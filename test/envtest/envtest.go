// Package envtest starts a real kube-apiserver and etcd for integration
// tests, from the binaries the local-cluster harness builds and caches
// (test/cluster/build.sh). It is the one place tests get an API server from.
package envtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"

	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	sigsyaml "sigs.k8s.io/yaml"
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

// Apply creates every object of the (multi-document) YAML manifests files
// as they are, e.g. a ValidatingAdmissionPolicy of deploy/base, and fails
// the test on an error. kinds, when given, limits it to objects of those
// kinds.
func Apply(t testing.TB, cfg *rest.Config, files []string, kinds ...string) {
	t.Helper()
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, file := range files {
		if err := apply(ctx, c, file, kinds); err != nil {
			t.Fatalf("apply %s: %v", file, err)
		}
	}
}

func apply(ctx context.Context, c client.Client, file string, kinds []string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	d := yaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var u unstructured.Unstructured
		err := d.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if len(u.Object) == 0 || (len(kinds) > 0 && !slices.Contains(kinds, u.GetKind())) {
			continue
		}
		if err := c.Create(ctx, &u); err != nil {
			return fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
		}
	}
}

// CRDsWithoutRules copies the CRD manifests of dir into a new directory and
// returns it, with the x-kubernetes-validations (CEL rules) of the property
// at path (e.g. "spec", "reservationTTL") removed from the CRD of kind:
// the CRD as it was before the rules existed, to store objects that the
// current CRD refuses. The test fails when that property has no rules.
func CRDsWithoutRules(t testing.TB, dir, kind string, path ...string) string {
	t.Helper()
	out := t.TempDir()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("CRDs in %s: %v (%d files)", dir, err, len(files))
	}
	found := false
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var crd map[string]any
		if err := sigsyaml.Unmarshal(b, &crd); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if k, _, _ := unstructured.NestedString(crd, "spec", "names", "kind"); k == kind {
			versions, _, _ := unstructured.NestedSlice(crd, "spec", "versions")
			for i, v := range versions {
				schema := []string{"schema", "openAPIV3Schema"}
				for _, p := range path {
					schema = append(schema, "properties", p)
				}
				prop, ok, _ := unstructured.NestedMap(v.(map[string]any), schema...)
				if !ok || prop["x-kubernetes-validations"] == nil {
					continue
				}
				delete(prop, "x-kubernetes-validations")
				if err := unstructured.SetNestedMap(v.(map[string]any), prop, schema...); err != nil {
					t.Fatal(err)
				}
				versions[i], found = v, true
			}
			if err := unstructured.SetNestedSlice(crd, versions, "spec", "versions"); err != nil {
				t.Fatal(err)
			}
			if b, err = sigsyaml.Marshal(crd); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(out, filepath.Base(file)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if !found {
		t.Fatalf("%s: no rules on %v of %s to remove", dir, path, kind)
	}
	return out
}
