package ipalloc_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/ipalloc"
)

// gcClaim is a Bound claim of node-a in pool p, held by container c-<name>
// of pod <name> (a prepared one, with no container, if prepared).
func gcClaim(name, addr string, prepared bool) *v1alpha1.IPClaim {
	c := &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: "p-" + name}, Spec: v1alpha1.IPClaimSpec{Pool: "p", Address: addr,
		Pod: v1alpha1.PodRef{Namespace: "ns", Name: name, UID: types.UID("uid-" + name)}, Node: "node-a", Interface: "eth0",
		Network: "berth", State: v1alpha1.ClaimBound, ContainerID: "c-" + name}}
	if prepared {
		c.Spec.ContainerID = ""
	}
	return c
}

// gcPod is the pod of gcClaim(name), in phase, reporting ips.
func gcPod(name string, phase corev1.PodPhase, ips ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name)}, Status: corev1.PodStatus{Phase: phase}}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return p
}

func TestAllocator_GC(t *testing.T) {
	none := func(*v1alpha1.IPClaim) bool { return false }
	for _, tc := range []struct {
		name     string
		claims   []*v1alpha1.IPClaim
		pods     []*corev1.Pod
		req      ipalloc.GCRequest
		released []string // claim names, sorted
		keptLive []string
		refused  bool
	}{{
		name:     "a claim missing from the list whose pod is gone is released",
		claims:   []*v1alpha1.IPClaim{gcClaim("a", "10.1.0.1", false), gcClaim("b", "10.1.0.2", false)},
		pods:     []*corev1.Pod{gcPod("b", corev1.PodRunning, "10.1.0.2")},
		req:      ipalloc.GCRequest{Network: "berth", Valid: func(c *v1alpha1.IPClaim) bool { return c.Name == "p-b" }},
		released: []string{"p-a"},
	}, {
		name:     "a running pod that reports the address keeps it, whatever the list",
		claims:   []*v1alpha1.IPClaim{gcClaim("a", "10.1.0.1", false)},
		pods:     []*corev1.Pod{gcPod("a", corev1.PodRunning, "10.1.0.1")},
		req:      ipalloc.GCRequest{Network: "berth", Valid: none},
		keptLive: []string{"p-a"},
	}, {
		name:   "a pod that ended, or reports another address, or a new pod of the name, does not keep it",
		claims: []*v1alpha1.IPClaim{gcClaim("a", "10.1.0.1", false), gcClaim("b", "10.1.0.2", false), gcClaim("c", "10.1.0.3", false)},
		pods: []*corev1.Pod{gcPod("a", corev1.PodSucceeded, "10.1.0.1"), gcPod("b", corev1.PodRunning, "10.1.0.9"),
			{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c", UID: "uid-new"}, Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.1.0.3"}}}}},
		req:      ipalloc.GCRequest{Network: "berth", Valid: none},
		released: []string{"p-a", "p-b", "p-c"},
	}, {
		name:     "claims of another network, and ADDs in flight, are not touched",
		claims:   []*v1alpha1.IPClaim{gcClaim("a", "10.1.0.1", false), gcClaim("b", "10.1.0.2", false)},
		req:      ipalloc.GCRequest{Network: "underlay", Valid: none},
		released: nil,
	}, {
		name:   "a prepared claim is not CNI GC's to judge",
		claims: []*v1alpha1.IPClaim{gcClaim("a", "10.1.0.1", true)},
		req:    ipalloc.GCRequest{Network: "berth", Valid: none},
	}, {
		name:     "a sweep judges prepared claims and every network",
		claims:   []*v1alpha1.IPClaim{gcClaim("a", "10.1.0.1", true), func() *v1alpha1.IPClaim { c := gcClaim("b", "10.1.0.2", false); c.Spec.Network = "underlay"; return c }()},
		req:      ipalloc.GCRequest{AllNetworks: true, Valid: none},
		released: []string{"p-a", "p-b"},
	}, {
		name:    "an empty list on a busy node is refused: nothing released",
		claims:  manyClaims(10),
		req:     ipalloc.GCRequest{Network: "berth", Valid: none},
		refused: true,
	}, {
		name:   "half of a busy node's claims at once is allowed",
		claims: manyClaims(10),
		req: ipalloc.GCRequest{Network: "berth", Valid: func(c *v1alpha1.IPClaim) bool {
			return slices.Contains([]string{"p-n6", "p-n7", "p-n8", "p-n9", "p-n10"}, c.Name)
		}},
		released: []string{"p-n1", "p-n2", "p-n3", "p-n4", "p-n5"},
	}, {
		name:     "the share is configurable",
		claims:   manyClaims(10),
		req:      ipalloc.GCRequest{Network: "berth", Valid: none, MaxShare: 1},
		released: []string{"p-n1", "p-n10", "p-n2", "p-n3", "p-n4", "p-n5", "p-n6", "p-n7", "p-n8", "p-n9"},
	}, {
		name:     "a node with few pods may lose them all",
		claims:   manyClaims(ipalloc.DefaultGCMinRefuse),
		req:      ipalloc.GCRequest{Network: "berth", Valid: none},
		released: []string{"p-n1", "p-n2", "p-n3", "p-n4"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, pool("p", "10.1.0.0/24"))
			for _, c := range tc.claims {
				e.store.PutClaim(c)
			}
			for _, p := range tc.pods {
				e.store.SetPod(p)
			}
			if tc.req.Keep == nil {
				tc.req.Keep = func(string) bool { return false }
			}
			res, err := e.alloc.GC(context.Background(), tc.req)
			var refused *ipalloc.GCRefusedError
			if tc.refused != errors.As(err, &refused) || (!tc.refused && err != nil) {
				t.Fatalf("GC: %v; want refused %v", err, tc.refused)
			}
			if got := claimNames(res.Released); !slices.Equal(got, tc.released) {
				t.Errorf("released %v, want %v", got, tc.released)
			}
			if got := claimNames(res.KeptLive); !slices.Equal(got, tc.keptLive) {
				t.Errorf("kept live %v, want %v", got, tc.keptLive)
			}
			var bound []string
			for _, c := range e.store.Claims() {
				if c.Spec.State == v1alpha1.ClaimBound {
					bound = append(bound, c.Name)
				}
			}
			slices.Sort(bound)
			if want := len(tc.claims) - len(tc.released); len(bound) != want {
				t.Errorf("%d claims still bound (%v), want %d", len(bound), bound, want)
			}
		})
	}
}

// manyClaims is n Bound claims of containers the runtime lost, their pods
// gone.
func manyClaims(n int) []*v1alpha1.IPClaim {
	var out []*v1alpha1.IPClaim
	for i := 1; i <= n; i++ {
		out = append(out, gcClaim(fmt.Sprintf("n%d", i), fmt.Sprintf("10.1.0.%d", i), false))
	}
	return out
}

func claimNames(cs []*v1alpha1.IPClaim) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	slices.Sort(out)
	return out
}
