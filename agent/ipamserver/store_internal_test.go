package ipamserver

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/berth-io/berth/api/v1alpha1"
)

// TestStore_rememberKeepsLater: two writes of one claim whose calls return
// out of order leave the later one shown; a deletion hides the claim from
// an earlier write remembered after it; a new claim of the same name
// (another UID) is shown over the deletion.
func TestStore_rememberKeepsLater(t *testing.T) {
	s := NewStore(nil, nil, nil)
	claim := func(uid types.UID, rv, container string) *v1alpha1.IPClaim {
		return &v1alpha1.IPClaim{ObjectMeta: metav1.ObjectMeta{Name: "p-10-0-0-1", UID: uid, ResourceVersion: rv},
			Spec: v1alpha1.IPClaimSpec{ContainerID: container}}
	}
	shown := func() string {
		if c := s.shadow("p-10-0-0-1", nil); c != nil {
			return string(c.UID) + "@" + c.ResourceVersion + "/" + c.Spec.ContainerID
		}
		return "none"
	}
	s.remember("p-10-0-0-1", claim("u1", "10", "c2"), "10")
	s.remember("p-10-0-0-1", claim("u1", "9", "c1"), "9")
	if got := shown(); got != "u1@10/c2" {
		t.Errorf("after writes at 10 then 9 remembered: %s, want u1@10/c2", got)
	}
	s.remember("p-10-0-0-1", claim("u1", "11", "c3"), "11")
	if got := shown(); got != "u1@11/c3" {
		t.Errorf("after a write at 11: %s, want u1@11/c3", got)
	}

	// Deleted at 11 (as Delete records it), then an earlier write returns.
	s.mu.Lock()
	s.set("p-10-0-0-1", overlayEntry{uid: "u1", rv: 11 + 1<<62})
	s.mu.Unlock()
	s.remember("p-10-0-0-1", claim("u1", "10", "c2"), "10")
	if e := s.overlay["p-10-0-0-1"]; e.claim != nil {
		t.Errorf("a write from before the deletion replaced it: %+v", e.claim)
	}
	s.remember("p-10-0-0-1", claim("u2", "12", "c4"), "12")
	if got := shown(); got != "u2@12/c4" {
		t.Errorf("a new claim of the same name: %s, want u2@12/c4", got)
	}
}
