package ipalloc_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/internal/ipalloc"
)

// addAs runs ADD of p's sandbox container id (the runtime's retry after a
// failed ADD makes a new sandbox).
func (e *env) addAs(p *corev1.Pod, id string) string {
	e.t.Helper()
	als, err := e.alloc.Allocate(context.Background(), ipalloc.Request{ContainerID: id, IfName: "eth0", PodNamespace: p.Namespace, PodName: p.Name, PodUID: p.UID})
	if err != nil {
		e.t.Fatalf("ADD %s (container %s): %v", p.Name, id, err)
	}
	return als[0].Address.Addr().String()
}

// conflict reports that another host answered for ip on container id's
// eth0, and runs the DEL the runtime runs after the failed ADD.
func (e *env) conflict(id, ip string) *v1alpha1.IPClaim {
	e.t.Helper()
	until := t0.Add(time.Hour)
	c, changed, err := e.alloc.Quarantine(context.Background(), id, "eth0", netip.MustParseAddr(ip), until)
	if err != nil || !changed {
		e.t.Fatalf("Quarantine %s of %s: changed %v, %v", ip, id, changed, err)
	}
	if c.Spec.State != v1alpha1.ClaimConflict || c.Spec.ContainerID != "" || c.Spec.ReservedUntil == nil || !c.Spec.ReservedUntil.Time.Equal(until) {
		e.t.Fatalf("quarantined claim: state %s, container %q, until %v; want Conflict, none, %v", c.Spec.State, c.Spec.ContainerID, c.Spec.ReservedUntil, until)
	}
	if err := e.alloc.Release(context.Background(), id, "eth0"); err != nil {
		e.t.Fatalf("DEL %s: %v", id, err)
	}
	if got := e.states()[ip]; got != v1alpha1.ClaimConflict {
		e.t.Fatalf("after the DEL the claim of %s is %q, want Conflict", ip, got)
	}
	return c
}

func TestAllocator_Quarantine(t *testing.T) {
	t.Run("deployment pod gets another address, and so does its app", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		p := e.pod("web-5d8f-aaaaa", "ReplicaSet", "web-5d8f", nil)
		bad := e.addAs(p, "c1")
		c := e.conflict("c1", bad)
		if c.Spec.App == nil || c.Spec.App.Name != "web" || c.Spec.Pod.UID != p.UID || c.Spec.Node != "node-a" {
			t.Errorf("quarantined claim keeps app %+v, pod %+v, node %q; want web, %s, node-a", c.Spec.App, c.Spec.Pod, c.Spec.Node, p.UID)
		}
		good := e.addAs(p, "c2")
		if good == bad {
			t.Fatalf("the next ADD got the conflicting address %s again", bad)
		}
		// Its replacement gets the pod's new address back, never the bad one.
		e.terminate(p)
		if err := e.alloc.Release(context.Background(), "c2", "eth0"); err != nil {
			t.Fatal(err)
		}
		e.store.RemovePod(p.Namespace, p.Name)
		if got := e.addAs(e.pod("web-5d8f-bbbbb", "ReplicaSet", "web-5d8f", nil), "c3"); got != good {
			t.Fatalf("replacement got %s, want the app's reservation %s", got, good)
		}
	})
	t.Run("the app's other reservation is taken", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		a := e.pod("web-5d8f-aaaaa", "ReplicaSet", "web-5d8f", nil)
		b := e.pod("web-5d8f-bbbbb", "ReplicaSet", "web-5d8f", nil)
		ipA, ipB := e.addAs(a, "ca"), e.addAs(b, "cb")
		for id, p := range map[string]*corev1.Pod{"ca": a, "cb": b} {
			e.terminate(p)
			if err := e.alloc.Release(context.Background(), id, "eth0"); err != nil {
				t.Fatal(err)
			}
			e.store.RemovePod(p.Namespace, p.Name)
		}
		n := e.pod("web-5d8f-ccccc", "ReplicaSet", "web-5d8f", nil)
		first := e.addAs(n, "c1")
		e.conflict("c1", first)
		other := map[string]string{ipA: ipB, ipB: ipA}[first]
		if got := e.addAs(n, "c2"); got != other {
			t.Fatalf("after the conflict on %s the pod got %s, want the app's other reservation %s", first, got, other)
		}
	})
	t.Run("statefulset ordinal gets a new address, retained from then on", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		p := e.pod("db-0", "StatefulSet", "db", nil)
		old := e.addAs(p, "c1")
		if err := e.alloc.Release(context.Background(), "c1", "eth0"); err != nil {
			t.Fatal(err)
		}
		if got := e.addAs(p, "c2"); got != old {
			t.Fatalf("db-0 got %s back, want its ordinal's %s", got, old)
		}
		e.conflict("c2", old)
		neu := e.addAs(p, "c3")
		if neu == old {
			t.Fatalf("db-0 got its conflicting address %s again", old)
		}
		e.terminate(p)
		if err := e.alloc.Release(context.Background(), "c3", "eth0"); err != nil {
			t.Fatal(err)
		}
		e.store.RemovePod("ns", "db-0")
		if got := e.addAs(e.pod("db-0", "StatefulSet", "db", nil), "c4"); got != neu {
			t.Fatalf("the next db-0 got %s, want the ordinal's new address %s", got, neu)
		}
	})
	t.Run("not retained: the DEL does not free it", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		p := e.pod("bare", "", "", nil)
		bad := e.addAs(p, "c1")
		e.conflict("c1", bad)
		if got := e.addAs(p, "c2"); got == bad {
			t.Fatalf("the next ADD got the conflicting address %s again", bad)
		}
	})
	t.Run("a repeated report, and one of no claim", func(t *testing.T) {
		e := newEnv(t, pool("p", "10.0.0.0/24"))
		p := e.pod("bare", "", "", nil)
		bad := e.addAs(p, "c1")
		e.conflict("c1", bad)
		c, changed, err := e.alloc.Quarantine(context.Background(), "c1", "eth0", netip.MustParseAddr(bad), t0.Add(2*time.Hour))
		if err != nil || changed || c.Spec.State != v1alpha1.ClaimConflict || !c.Spec.ReservedUntil.Time.Equal(t0.Add(time.Hour)) {
			t.Fatalf("repeated report: changed %v, %v; want the claim unchanged", changed, err)
		}
		_, _, err = e.alloc.Quarantine(context.Background(), "c9", "eth0", netip.MustParseAddr("10.0.0.77"), t0)
		want := "container c9 interface eth0, address 10.0.0.77: no claim of the container holds the address"
		if !errors.Is(err, ipalloc.ErrNotHeld) || err.Error() != want {
			t.Fatalf("report of no claim: %v, want %q", err, want)
		}
	})
}
