// Package claimindex registers IPClaim indexes in a controller-runtime
// cache, for berth-agent's store and berth-controller's reconcilers.
package claimindex

import (
	"context"
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
)

// Register adds to idx, for each name in indexes, an index of IPClaims by
// the value its function returns for a claim ("": the claim is not in
// that index). Readers list by it with client.MatchingFields{name: value}.
// Call it before the cache starts.
func Register(ctx context.Context, idx client.FieldIndexer, indexes map[string]func(*v1alpha1.IPClaim) string) error {
	for name, f := range indexes {
		err := idx.IndexField(ctx, &v1alpha1.IPClaim{}, name, func(o client.Object) []string {
			if c, ok := o.(*v1alpha1.IPClaim); ok {
				if v := f(c); v != "" {
					return []string{v}
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("index ipclaims by %s: %w", name, err)
		}
	}
	return nil
}
