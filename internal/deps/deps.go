//go:build tools

// Package deps pins the modules the project builds on before code uses them.
package deps

import (
	_ "github.com/containerd/nri/pkg/stub"
	_ "github.com/google/go-containerregistry/pkg/v1/tarball"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "k8s.io/client-go/kubernetes"
	_ "sigs.k8s.io/controller-runtime"
	_ "sigs.k8s.io/controller-runtime/pkg/envtest"
)
