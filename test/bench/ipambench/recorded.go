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
// recorded (at most 2 minutes). A prepared ADD answers from the cache and
// records the container ID on the claim right after: the figure says how
// long that work trails the answers. Called once the ADD round is over: a
// watch running during the round would decode every update on the CPUs
// the ADDs are measured on. So it lists the claims, and watches from there
// only if some are not recorded yet; the time is that of the list or of
// the last update's event, never earlier than the commit.
func waitRecorded(ctx context.Context, c client.WithWatch, prefix string, n int) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	sel := client.MatchingLabels{v1alpha1.LabelNode: benchNode}
	recorded := map[string]bool{}
	see := func(cl *v1alpha1.IPClaim) {
		if strings.HasPrefix(cl.Spec.Pod.Name, prefix) && cl.Spec.ContainerID != "" {
			recorded[cl.Spec.Pod.Name] = true
		}
	}
	var l v1alpha1.IPClaimList
	if err := c.List(ctx, &l, sel); err != nil {
		return time.Time{}, fmt.Errorf("claims: %w", err)
	}
	for i := range l.Items {
		see(&l.Items[i])
	}
	if len(recorded) == n {
		return time.Now(), nil
	}
	w, err := c.Watch(ctx, &v1alpha1.IPClaimList{}, sel, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: l.ResourceVersion}})
	if err != nil {
		return time.Time{}, fmt.Errorf("watch claims: %w", err)
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		switch ev.Type {
		case watch.Error:
			return time.Time{}, fmt.Errorf("watch claims: %v", ev.Object)
		case watch.Added, watch.Modified:
			if cl, ok := ev.Object.(*v1alpha1.IPClaim); ok {
				see(cl)
			}
		}
		if len(recorded) == n {
			return time.Now(), nil
		}
	}
	if ctx.Err() != nil {
		return time.Time{}, fmt.Errorf("container IDs of %d ADDs: %d recorded after 2 minutes", n, len(recorded))
	}
	return time.Time{}, fmt.Errorf("claim watch ended with %d of %d container IDs recorded", len(recorded), n)
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
		rec := float64(n) / r.add.recorded.Seconds()
		vs := "-"
		for _, h := range results {
			if h.plugin == "host-local" && h.conc == r.conc && h.rep == r.rep {
				vs = fmt.Sprintf("%.2fx", rec/h.add.rate)
			}
		}
		fmt.Fprintf(w, "| %d | %d | %s | %.0f | %.0f | %.0f | %s |\n", r.conc, n, ms(r.prepared), float64(n)/r.prepared.Seconds(), r.add.rate, rec, vs)
	}
}
