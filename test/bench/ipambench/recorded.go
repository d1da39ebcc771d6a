package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/berth-io/berth/api/v1alpha1"
)

// waitRecorded returns, for the claims of pods prefix0..n-1 prepared
// with no container ID, when the bench saw the last one's container ID
// recorded. A prepared ADD answers from the cache and records the
// container ID on the claim right after: the figure says how long that
// work trails the answers.
func waitRecorded(ctx context.Context, c client.WithWatch, prefix string, n int) (time.Time, error) {
	return waitClaims(ctx, c, prefix, "container IDs recorded", func(claims map[string]*v1alpha1.IPClaim) (int, bool) {
		recorded := 0
		for _, cl := range claims {
			if cl.Spec.ContainerID != "" {
				recorded++
			}
		}
		return recorded, recorded == n
	})
}

// waitReleased returns when the bench saw the last claim of the pods
// prefix* deleted: with --ipam-defer-release the agent answers a DEL
// before its release is committed, and the figure says how long that
// work trails the answers. (The bench's pods are bare pods: each DEL
// deletes its claim.)
func waitReleased(ctx context.Context, c client.WithWatch, prefix string) (time.Time, error) {
	return waitClaims(ctx, c, prefix, "claims left", func(claims map[string]*v1alpha1.IPClaim) (int, bool) {
		return len(claims), len(claims) == 0
	})
}

// waitClaims returns when done holds over the claims of the bench node's
// pods named prefix*, as the bench sees them (at most 2 minutes); done
// also counts what it waits for, for the error. Called once a round is
// over: a watch running during the round would decode every write on the
// CPUs the calls are measured on. So it lists the claims, and watches
// from there only if done does not hold yet; the time is that of the list
// or of the last event, never earlier than the commit.
func waitClaims(ctx context.Context, c client.WithWatch, prefix, what string, done func(map[string]*v1alpha1.IPClaim) (int, bool)) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	sel := client.MatchingLabels{v1alpha1.LabelNode: benchNode}
	claims := map[string]*v1alpha1.IPClaim{}
	see := func(cl *v1alpha1.IPClaim, gone bool) {
		switch {
		case !strings.HasPrefix(cl.Spec.Pod.Name, prefix):
		case gone:
			delete(claims, cl.Name)
		default:
			claims[cl.Name] = cl
		}
	}
	var l v1alpha1.IPClaimList
	if err := c.List(ctx, &l, sel); err != nil {
		return time.Time{}, fmt.Errorf("claims: %w", err)
	}
	for i := range l.Items {
		see(&l.Items[i], false)
	}
	if _, ok := done(claims); ok {
		return time.Now(), nil
	}
	w, err := c.Watch(ctx, &v1alpha1.IPClaimList{}, sel, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: l.ResourceVersion}})
	if err != nil {
		return time.Time{}, fmt.Errorf("watch claims: %w", err)
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		if ev.Type == watch.Error {
			return time.Time{}, fmt.Errorf("watch claims: %v", ev.Object)
		}
		if cl, ok := ev.Object.(*v1alpha1.IPClaim); ok && ev.Type != watch.Bookmark {
			see(cl, ev.Type == watch.Deleted)
		}
		if _, ok := done(claims); ok {
			return time.Now(), nil
		}
	}
	n, _ := done(claims)
	if ctx.Err() != nil {
		return time.Time{}, fmt.Errorf("%d %s after 2 minutes", n, what)
	}
	return time.Time{}, fmt.Errorf("claim watch ended with %d %s", n, what)
}

// prepRow is one berth-ipam-prepared round.
type prepRow struct {
	conc, rep int
	prepared  time.Duration // from the first pod create to the last claim prepared
	add       stats
}

// writePrepared prints how long the agent took to prepare each prepared
// round's pods, and each round's ADD throughput counted until the ADDs
// were answered and until their container IDs were recorded, the latter
// also over host-local's ADD throughput of the same repetition.
func writePrepared(w io.Writer, rows []prepRow, results []result, n int) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s: the pods created bound to the node (as the scheduler does) before the round; the agent prepared their\n", preparedPlugin)
	fmt.Fprintf(w, "addresses (one claim create each) in the time given, from the first pod create to the last claim listed (its CPU is in the\n")
	fmt.Fprintf(w, "rows above). Then ADD/s counted until the last ADD answered (as above) and until the last container ID was recorded on its claim\n")
	fmt.Fprintf(w, "(seen through a list, then a watch if needed, both after the round; the DELs start after that)\n\n")
	fmt.Fprintln(w, "| concurrency | pods | all prepared after | pods/s | ADD/s answered | ADD/s recorded | recorded over host-local's ADD/s |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, r := range rows {
		rec := float64(n) / r.add.committed.Seconds()
		vs := "-"
		if h, ok := baselineOf(results, r.conc, r.rep); ok {
			vs = ratio(rec / h.add.rate)
		}
		fmt.Fprintf(w, "| %d | %d | %s | %.0f | %.0f | %.0f | %s |\n", r.conc, n, ms(r.prepared), float64(n)/r.prepared.Seconds(), r.add.rate, rec, vs)
	}
}

// writeReleased prints, for the rounds whose DELs the bench waited for,
// DEL throughput counted until the last DEL answered and until the last
// claim was gone, the latter also over host-local's DEL throughput of the
// same repetition.
func writeReleased(w io.Writer, results []result, n int) {
	head := false
	for _, r := range results {
		if r.del.committed == 0 {
			continue
		}
		if !head {
			fmt.Fprintf(w, "\nDEL/s counted until the last DEL answered (as above) and until the last claim of the round was deleted\n")
			fmt.Fprintf(w, "(seen through a list, then a watch if needed, both after the round)\n\n")
			fmt.Fprintln(w, "| plugin | concurrency | DEL/s answered | DEL/s released | released over host-local's DEL/s |")
			fmt.Fprintln(w, "|---|---|---|---|---|")
			head = true
		}
		rel := float64(n) / r.del.committed.Seconds()
		vs := "-"
		if h, ok := baselineOf(results, r.conc, r.rep); ok {
			vs = ratio(rel / h.del.rate)
		}
		fmt.Fprintf(w, "| %s | %d | %.0f | %.0f | %s |\n", r.plugin, r.conc, r.del.rate, rel, vs)
	}
}

// writeBudget prints, for each round and phase, the CPU time per call by
// process, from the phase's first call until its last write was committed
// (for plugins that commit nothing after answering, the last answer), and
// the rate those figures allow on cpus CPUs if nothing else ran. At
// concurrency 1 a round whose CPU per call exceeds cpus times host-local's
// mean call cannot keep host-local's pace, however its work is scheduled.
func writeBudget(w io.Writer, results []result, n, cpus int) {
	fmt.Fprintf(w, "\nCPU time per call by process (each phase until its last write was committed), and the calls/s %d CPUs allow at that cost\n\n", cpus)
	fmt.Fprintln(w, "| plugin | concurrency | phase | CPU: plugin | CPU: bench | CPU: agent | CPU: kube-apiserver | CPU: etcd | CPU: total | calls/s allowed | calls/s measured |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
	per := func(d time.Duration) time.Duration { return d / time.Duration(n) }
	for _, r := range results {
		for _, ph := range []struct {
			name string
			st   stats
		}{{"ADD", r.add}, {"DEL", r.del}} {
			total := per(ph.st.cpu)
			row := fmt.Sprintf("| %s | %d | %s | %s |", r.plugin, r.conc, ph.name, ms(total))
			for _, d := range ph.st.procCPU {
				row += fmt.Sprintf(" %s |", ms(per(d)))
				total += per(d)
			}
			rate := ph.st.rate
			if ph.st.committed > 0 {
				rate = float64(n) / ph.st.committed.Seconds()
			}
			fmt.Fprintf(w, "%s %s | %.0f | %.0f |\n", row, ms(total), float64(cpus)/total.Seconds(), rate)
		}
	}
}
