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

// watchRecorded watches the claims of pods prefix0..n-1, prepared with no
// container ID, and returns a function that waits (at most 2 minutes)
// until each has one and returns when the last one's update arrived. A
// prepared ADD answers from the cache and records the container ID on the
// claim right after: the figure says how long that work trails the
// answers.
func watchRecorded(ctx context.Context, c client.WithWatch, prefix string, n int) (func() (time.Time, error), error) {
	sel := client.MatchingLabels{v1alpha1.LabelNode: benchNode}
	var l v1alpha1.IPClaimList
	if err := c.List(ctx, &l, sel); err != nil {
		return nil, fmt.Errorf("claims: %w", err)
	}
	w, err := c.Watch(ctx, &v1alpha1.IPClaimList{}, sel, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: l.ResourceVersion}})
	if err != nil {
		return nil, fmt.Errorf("watch claims: %w", err)
	}
	type done struct {
		at  time.Time
		err error
	}
	result := make(chan done, 1)
	go func() {
		recorded := map[string]bool{}
		for ev := range w.ResultChan() {
			switch ev.Type {
			case watch.Error:
				result <- done{err: fmt.Errorf("watch claims: %v", ev.Object)}
				return
			case watch.Added, watch.Modified:
				cl, ok := ev.Object.(*v1alpha1.IPClaim)
				if ok && strings.HasPrefix(cl.Spec.Pod.Name, prefix) && cl.Spec.ContainerID != "" {
					recorded[cl.Spec.Pod.Name] = true
				}
			}
			if len(recorded) == n {
				result <- done{at: time.Now()}
				return
			}
		}
		result <- done{err: fmt.Errorf("claim watch ended with %d of %d container IDs recorded", len(recorded), n)}
	}()
	return func() (time.Time, error) {
		defer w.Stop()
		select {
		case d := <-result:
			return d.at, d.err
		case <-time.After(2 * time.Minute):
			return time.Time{}, fmt.Errorf("container IDs of %d ADDs not all recorded after 2 minutes", n)
		}
	}, nil
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
	fmt.Fprintf(w, "(seen through a watch; the DELs start after that)\n\n")
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
