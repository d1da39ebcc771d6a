package ipalloc

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/api/v1alpha1"
)

// poolCache keeps parsed pools by UID and resourceVersion.
type poolCache struct {
	mu sync.Mutex
	m  map[types.UID]cachedPool
}

type cachedPool struct {
	rv   string
	pool *Pool
	err  error
}

func (c *poolCache) get(p *v1alpha1.IPPool) (*Pool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[p.UID]; ok && e.rv == p.ResourceVersion && p.ResourceVersion != "" {
		return e.pool, e.err
	}
	pool, err := ParsePool(p)
	if c.m == nil {
		c.m = map[types.UID]cachedPool{}
	}
	c.m[p.UID] = cachedPool{rv: p.ResourceVersion, pool: pool, err: err}
	return pool, err
}
