// Package restconfig loads the API server connection of Berth's binaries.
package restconfig

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
)

// Load returns the connection from kubeconfig, or when it is empty from
// env KUBECONFIG, then the in-cluster service account, then
// ~/.kube/config (controller-runtime's order). Either way the client has
// no client-side rate limit, as controller-runtime sets it in a pod:
// client-go's default (5 QPS) would cap berth-ipam at 5 ADDs/s, and the API
// server's priority and fairness applies instead.
func Load(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return ctrl.GetConfig()
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	if cfg.QPS == 0 {
		cfg.QPS = -1
	}
	return cfg, nil
}
