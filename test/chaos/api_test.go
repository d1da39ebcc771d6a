package chaos_test

import (
	"context"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/test/envtest"
)

// api is a real kube-apiserver with Berth's CRDs, for the fault tests
// that run agents against it.
type api struct {
	cfg    *rest.Config
	scheme *runtime.Scheme
	client client.Client
}

// startAPI starts the API server for the test, with a scheme of
// client-go's and Berth's types and a client of it.
func startAPI(t *testing.T) api {
	t.Helper()
	a := api{cfg: envtest.Start(t, envtest.Options{CRDDirectoryPaths: []string{filepath.Join("..", "..", "deploy", "base", "crds")}}),
		scheme: runtime.NewScheme()}
	if err := clientgoscheme.AddToScheme(a.scheme); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(a.scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(a.cfg, client.Options{Scheme: a.scheme})
	if err != nil {
		t.Fatal(err)
	}
	a.client = c
	return a
}

// create creates obj, failing the test on an error.
func (a api) create(ctx context.Context, t *testing.T, obj client.Object) {
	t.Helper()
	if err := a.client.Create(ctx, obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}
