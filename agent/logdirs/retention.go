package logdirs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/berth-io/berth/hooks/filelogs"
)

// PassStats says what one retention pass did.
type PassStats struct {
	// Pods is the number of pod directories looked at.
	Pods int
	// Entries is the number of files, directories and symlinks looked at
	// inside log directories.
	Entries int
	// Bytes is the disk space the pod directories use after the pass.
	Bytes int64
	// RemovedFiles counts files, symlinks and empty directories removed
	// from the log directories of pods that are not (yet) removed.
	RemovedFiles int
	// RemovedPods counts pod directories removed.
	RemovedPods int
	// RemovedBytes is the disk space freed, by age, by size limits and
	// with gone pods.
	RemovedBytes int64
	// Unsafe counts the unsafe entries met below log directories, by
	// kind (see unsafeKinds): symlinks, hard links, device nodes, FIFOs
	// and sockets are removed whatever their age; set-ID bits are
	// stripped; mtimes in the future are set to now.
	Unsafe map[string]int
	// OverLimit counts the containers found over their size limit.
	OverLimit int
	// TrimmedFiles counts the files emptied (and, unless written within
	// the last Interval, removed) to bring containers under their size
	// limit; TrimmedBytes is the space it freed.
	TrimmedFiles int
	TrimmedBytes int64
	// Errors counts errors; FirstError is the first of them.
	Errors     int
	FirstError error
	// Duration is how long the pass took.
	Duration time.Duration
}

// Start runs a retention pass at once and then every Interval until ctx
// is done; it returns nil. It is a controller-runtime manager.Runnable.
func (m *Manager) Start(ctx context.Context) error {
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		st := m.Pass(ctx)
		unsafe := 0
		for _, n := range st.Unsafe {
			unsafe += n
		}
		attrs := []any{"pods", st.Pods, "entries", st.Entries, "bytes", st.Bytes, "removed_files", st.RemovedFiles,
			"removed_pods", st.RemovedPods, "removed_bytes", st.RemovedBytes, "unsafe", unsafe,
			"over_limit", st.OverLimit, "trimmed_files", st.TrimmedFiles, "trimmed_bytes", st.TrimmedBytes,
			"errors", st.Errors, "seconds", st.Duration.Seconds()}
		if st.Errors > 0 {
			m.log.Warn("retention pass", append(attrs, "first_err", st.FirstError)...)
		} else {
			m.log.Info("retention pass", attrs...)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Pass makes one retention pass over the root:
//
//   - the root and each pod directory are made root's with at most mode
//     0750 (privateMode);
//   - below the log directories, whatever their age, symlinks, hard
//     links (a regular file with more than one link), device nodes,
//     FIFOs and sockets are removed, set-user-ID and set-group-ID bits
//     are stripped, and an mtime in the future is set to now;
//   - in each pod directory, files and empty directories below the log
//     directories whose mtime is older than Retention are removed (the
//     log directories themselves, the container directories and the
//     metadata files stay while the pod does);
//   - a container whose log directories together use more than its size
//     limit (its pod's filelogs.AnnotationSizeLimit, recorded in its
//     metadata file, within MaxSizeLimit; otherwise SizeLimit) has its
//     oldest files (by mtime) emptied and removed until it is under; a
//     file written within the last Interval is emptied but kept, since
//     its writer may hold it open. The pod gets a FileLogsOverLimit
//     Event;
//   - a pod directory whose pod is gone gets filelogs.GoneFile with the
//     time, if it has none (the agent writes it at RemovePodSandbox; this
//     catches pods removed while it was down), and is removed once that
//     time is Retention ago. Whether a pod is gone is known only after the
//     first Synchronize; before it, no pod is;
//   - leftovers of an interrupted removal (filelogs.TrashPrefix) are
//     removed;
//   - berth_agent_filelogs_pod_bytes is set for each pod directory.
//
// Entries whose names PodDirName cannot make are left alone, as is
// anything on another file system than the root. Pass runs one at a time.
func (m *Manager) Pass(ctx context.Context) PassStats {
	m.passMu.Lock()
	defer m.passMu.Unlock()
	start := time.Now()
	now := m.cfg.Now()
	p := &pass{m: m, now: now, cutoff: now.Add(-m.cfg.Retention), stats: PassStats{Unsafe: map[string]int{}}}
	series := map[[3]string]struct{}{}
	p.run(ctx, series)
	for s := range m.podSeries {
		if _, ok := series[s]; !ok {
			m.metrics.podBytes.DeleteLabelValues(s[0], s[1], s[2])
			// By UID: their pod label may be the metadata's longer name.
			pod := prometheus.Labels{"uid": s[2]}
			m.metrics.overLimit.DeletePartialMatch(pod)
			m.metrics.overLimitB.DeletePartialMatch(pod)
		}
	}
	for kind, n := range p.stats.Unsafe {
		m.metrics.unsafe.WithLabelValues(kind).Add(float64(n))
	}
	m.podSeries = series

	p.stats.Duration = time.Since(start)
	m.metrics.removedFiles.Add(float64(p.stats.RemovedFiles))
	m.metrics.removedPods.Add(float64(p.stats.RemovedPods))
	m.metrics.removedBytes.Add(float64(p.stats.RemovedBytes))
	m.metrics.errors.Add(float64(p.stats.Errors))
	m.metrics.passSeconds.Set(p.stats.Duration.Seconds())
	m.metrics.lastPass.Set(float64(m.cfg.Now().UnixNano()) / 1e9)
	return p.stats
}

// pass is the state of one retention pass.
type pass struct {
	m      *Manager
	now    time.Time
	cutoff time.Time
	dev    uint64 // the root's file system
	stats  PassStats
	// inodes holds the files with several links seen in the current pod,
	// to count their space once.
	inodes map[uint64]struct{}
}

func (p *pass) fail(err error) {
	p.stats.Errors++
	if p.stats.FirstError == nil {
		p.stats.FirstError = err
	}
}

func (p *pass) run(ctx context.Context, series map[[3]string]struct{}) {
	root, err := openRoot(p.m.cfg.Root)
	if err != nil {
		p.fail(err)
		return
	}
	defer root.close()
	st, err := root.stat()
	if err != nil {
		p.fail(err)
		return
	}
	p.dev = st.Dev
	if err := p.m.secure(root); err != nil {
		p.fail(err)
	}
	err = root.each(func(name string) bool {
		if ctx.Err() != nil {
			return false
		}
		if strings.HasPrefix(name, filelogs.TrashPrefix) {
			p.removeTrash(root, name)
			return true
		}
		ns, pod, uid, ok := filelogs.ParsePodDirName(name)
		if !ok {
			return true
		}
		st, err := root.lstat(name)
		if err != nil {
			if !errors.Is(err, unix.ENOENT) {
				p.fail(err)
			}
			return true
		}
		if !isDir(st) || st.Dev != p.dev {
			return true
		}
		p.stats.Pods++
		if p.removeIfGone(root, name, uid) {
			return true
		}
		used := p.walkPod(root, name, ns, pod, uid)
		p.stats.Bytes += used
		p.m.metrics.podBytes.WithLabelValues(ns, pod, uid).Set(float64(used))
		series[[3]string{ns, pod, uid}] = struct{}{}
		return true
	})
	if err != nil {
		p.fail(err)
	}
}

// removeIfGone removes the pod directory name if its pod has been gone for
// Retention, marking it gone first if it is not yet. It reports whether
// the directory was removed.
func (p *pass) removeIfGone(root *dir, name, uid string) bool {
	m := p.m
	if m.isLive(uid) {
		return false
	}
	goneAt, err := p.goneAt(root, name)
	if err != nil {
		p.fail(err)
		return false
	}
	if p.now.Sub(goneAt) < m.cfg.Retention {
		return false
	}
	trash := filelogs.TrashPrefix + uid
	p.removeTrash(root, trash)
	// The check and the rename are one step for CreateContainer and
	// RunPodSandbox, which take the same lock: a pod that comes back
	// gets a fresh directory, never a half-removed one.
	m.mu.Lock()
	if m.isLiveLocked(uid) {
		m.mu.Unlock()
		return false
	}
	err = root.rename(name, trash)
	m.mu.Unlock()
	if err != nil {
		p.fail(err)
		return false
	}
	freed, err := root.removeAll(trash, p.dev, 0)
	p.stats.RemovedBytes += freed
	if err != nil {
		p.fail(err)
	}
	p.stats.RemovedPods++
	m.log.Info("removed the log directory of a gone pod", "dir", root.join(name), "gone_at", goneAt.UTC(),
		"freed_bytes", freed)
	return true
}

// goneAt returns the time in the pod directory's GoneFile, writing now
// there if it has none or an unreadable one.
func (p *pass) goneAt(root *dir, name string) (time.Time, error) {
	podDir, err := root.openDir(name)
	if err != nil {
		return time.Time{}, err
	}
	defer podDir.close()
	b, err := podDir.readFile(filelogs.GoneFile, 64)
	if err == nil {
		if t, perr := time.Parse(time.RFC3339Nano, string(bytes.TrimSpace(b))); perr == nil {
			return t, nil
		}
	} else if !errors.Is(err, unix.ENOENT) {
		p.fail(err)
	}
	if err := podDir.writeFile(filelogs.GoneFile, []byte(p.now.UTC().Format(time.RFC3339Nano)+"\n")); err != nil {
		return time.Time{}, err
	}
	p.m.log.Info("pod gone from the node; its log directory is removed after the retention",
		"dir", root.join(name), "retention_seconds", p.m.cfg.Retention.Seconds())
	return p.now, nil
}

// removeTrash removes a left-over directory of an interrupted removal.
func (p *pass) removeTrash(root *dir, name string) {
	freed, err := root.removeAll(name, p.dev, 0)
	p.stats.RemovedBytes += freed
	if err != nil {
		p.fail(err)
	}
}

// walkPod makes the pod directory private, defuses what containers
// planted below its log directories, removes old entries there, brings
// each container under its size limit, and returns the pod directory's
// disk use.
func (p *pass) walkPod(root *dir, name, ns, podName, uid string) int64 {
	podDir, err := root.openDir(name)
	if err != nil {
		p.fail(err)
		return 0
	}
	defer podDir.close()
	p.inodes = map[uint64]struct{}{}
	if err := p.m.secure(podDir); err != nil {
		p.fail(err)
	}
	st, err := podDir.stat()
	if err != nil {
		p.fail(err)
		return 0
	}
	used := st.Blocks * 512
	if p.m.knownLive(uid) {
		// Back after all (e.g. marked while the agent had a stale view).
		if err := podDir.unlink(filelogs.GoneFile); err != nil && !errors.Is(err, unix.ENOENT) {
			p.fail(err)
		}
	}
	pod := podRef{namespace: ns, name: podName, uid: uid}
	err = podDir.each(func(ctrName string) bool {
		st, ok := p.lstat(podDir, ctrName)
		if !ok {
			return true
		}
		used += p.account(st)
		if !isDir(st) || st.Dev != p.dev {
			return true
		}
		ctrDir, err := podDir.openDir(ctrName)
		if err != nil {
			p.fail(err)
			return true
		}
		defer ctrDir.close()
		used += p.walkContainer(ctrDir, pod, ctrName)
		return true
	})
	if err != nil {
		p.fail(err)
	}
	return used
}

// podRef names a pod, for Events and metrics.
type podRef struct{ namespace, name, uid string }

// container is what a pass learns of one container directory.
type container struct {
	name string
	// used is the disk use of its log directories and what is in them.
	used int64
	// logDirs are the names of its log directories.
	logDirs []string
	// unsafe counts the unsafe entries met, by kind.
	unsafe map[string]int
}

// walkContainer does walkPod's work for one container directory and
// returns its disk use.
func (p *pass) walkContainer(ctrDir *dir, pod podRef, ctrName string) int64 {
	c := &container{name: ctrName, unsafe: map[string]int{}}
	var used int64 // of the container directory's other entries
	err := ctrDir.each(func(logName string) bool {
		st, ok := p.lstat(ctrDir, logName)
		if !ok {
			return true
		}
		if !isDir(st) || st.Dev != p.dev {
			used += p.account(st)
			return true
		}
		logDir, err := ctrDir.openDir(logName)
		if err != nil {
			p.fail(err)
			used += p.account(st)
			return true
		}
		defer logDir.close()
		// The container may chmod its own log directory.
		if st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			if err := logDir.chmod(st.Mode & 0o1777); err != nil {
				p.fail(err)
			} else {
				c.unsafe[kindSetID]++
				p.stats.Unsafe[kindSetID]++
			}
		}
		c.used += p.account(st)
		c.used += p.ageOut(logDir, 1, c)
		c.logDirs = append(c.logDirs, logName)
		return true
	})
	if err != nil {
		p.fail(err)
	}
	md := p.metadata(ctrDir)
	if md != nil && md.UID == pod.uid && md.Namespace == pod.namespace {
		pod.name = md.Pod // the directory's name may have a shortened one
	}
	p.reportUnsafe(pod, c)
	if limit := p.limit(md); c.used > limit {
		c.used -= p.trim(ctrDir, pod, c, limit)
	}
	return used + c.used
}

// metadata reads the container directory's metadata file; nil if it has
// none or a broken one (then the defaults apply).
func (p *pass) metadata(ctrDir *dir) *filelogs.Metadata {
	b, err := ctrDir.readFile(filelogs.MetadataFile, maxMetadataLen)
	if err != nil {
		if !errors.Is(err, unix.ENOENT) {
			p.fail(err)
		}
		return nil
	}
	var md filelogs.Metadata
	if err := json.Unmarshal(b, &md); err != nil {
		p.fail(fmt.Errorf("read %s: %w", ctrDir.join(filelogs.MetadataFile), err))
		return nil
	}
	return &md
}

// futureSlack is how far in the future an mtime may be without being
// reset and reported: files written while a pass runs are newer than the
// pass's start.
const futureSlack = time.Minute

// maxMetadataLen bounds what is read of a metadata file: its pod's labels
// take at most 256 KiB in the API server.
const maxMetadataLen = 1 << 20

// limit returns a container's size limit: its pod's, within MaxSizeLimit,
// or the node's default.
func (p *pass) limit(md *filelogs.Metadata) int64 {
	if md != nil && md.SizeLimit > 0 {
		return min(md.SizeLimit, p.m.cfg.MaxSizeLimit)
	}
	return p.m.cfg.SizeLimit
}

// unsafeKind returns the kind of an entry that has no business in a log
// directory and is removed whatever its age, or "".
func unsafeKind(st unix.Stat_t) string {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return kindSymlink
	case unix.S_IFCHR, unix.S_IFBLK:
		return kindDevice
	case unix.S_IFIFO:
		return kindFIFO
	case unix.S_IFSOCK:
		return kindSocket
	case unix.S_IFREG:
		if st.Nlink > 1 {
			// Another name of the inode may be outside the container's
			// directories (a host file, another pod's log): host tools
			// must not meet it here, and retention must not age it.
			return kindHardlink
		}
	}
	return ""
}

// ageOut defuses the unsafe entries of d, removes those older than the
// cutoff, depth first, and returns the disk use of what is left. depth is
// d's depth below the container directory.
func (p *pass) ageOut(d *dir, depth int, c *container) int64 {
	var used int64
	err := d.each(func(name string) bool {
		st, ok := p.lstat(d, name)
		if !ok {
			return true
		}
		p.stats.Entries++
		if st.Dev != p.dev {
			return true // a mount point: not Berth's
		}
		if kind := unsafeKind(st); kind != "" {
			err := d.unlink(name)
			if err == nil || errors.Is(err, unix.ENOENT) {
				c.unsafe[kind]++
				p.stats.Unsafe[kind]++
				return true
			}
			p.fail(err)
			used += p.account(st)
			return true
		}
		if st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 && !isDir(st) {
			if err := d.chmodFile(name, st.Ino, st.Mode&0o1777); err != nil {
				p.fail(err)
			} else {
				c.unsafe[kindSetID]++
				p.stats.Unsafe[kindSetID]++
			}
		}
		mt := mtime(st)
		if mt.After(p.now) {
			// Counted as now, for its age and for size limits. An mtime
			// beyond the writes of this pass (and a little clock skew)
			// is reset: from the future the file would never be old.
			if now := p.m.cfg.Now(); mt.After(now.Add(futureSlack)) {
				if err := d.setMtime(name, now); err != nil {
					p.fail(err)
				} else {
					c.unsafe[kindFutureMtime]++
					p.stats.Unsafe[kindFutureMtime]++
				}
			}
			mt = p.now
		}
		old := mt.Before(p.cutoff)
		if isDir(st) {
			if depth >= maxDepth {
				p.fail(fmt.Errorf("%s: more than %d directories deep: not looked into", d.join(name), maxDepth))
				used += p.account(st)
				return true
			}
			sub, err := d.openDir(name)
			if err != nil {
				p.fail(err) // e.g. swapped for a symlink since the lstat
				return true
			}
			if st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
				// New entries would take its group (and subdirectories
				// its set-group-ID bit).
				if err := p.chmodDir(sub, st); err != nil {
					p.fail(err)
				} else {
					c.unsafe[kindSetID]++
					p.stats.Unsafe[kindSetID]++
				}
			}
			used += p.ageOut(sub, depth+1, c)
			sub.close()
			if old {
				// Its mtime before the walk: removing entries updated it.
				err := d.rmdir(name)
				if err == nil {
					p.stats.RemovedFiles++
					p.stats.RemovedBytes += st.Blocks * 512
					return true
				}
				if !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.ENOENT) {
					p.fail(err)
				}
			}
			used += p.account(st)
			return true
		}
		if old {
			err := d.unlink(name)
			if err == nil {
				p.stats.RemovedFiles++
				p.stats.RemovedBytes += st.Blocks * 512
				return true
			}
			if !errors.Is(err, unix.ENOENT) {
				p.fail(err)
			}
		}
		used += p.account(st)
		return true
	})
	if err != nil {
		p.fail(err)
	}
	return used
}

// chmodDir strips the set-ID bits of the directory sub, which the caller
// saw as st, if it is still that directory.
func (p *pass) chmodDir(sub *dir, st unix.Stat_t) error {
	now, err := sub.stat()
	if err != nil {
		return err
	}
	if now.Ino != st.Ino || now.Dev != st.Dev {
		return fmt.Errorf("%s: %w", sub.path, errReplaced)
	}
	return sub.chmod(now.Mode & 0o1777)
}

// reportUnsafe records, if retention met unsafe entries in c, a Warning
// Event on its pod that says what it found and did.
func (p *pass) reportUnsafe(pod podRef, c *container) {
	var removed, defused []string
	for _, kind := range unsafeKinds {
		n := c.unsafe[kind]
		if n == 0 {
			continue
		}
		switch kind {
		case kindSetID:
			defused = append(defused, fmt.Sprintf("stripped the set-user-ID or set-group-ID bits of %s", plural(n, "entry", "entries")))
		case kindFutureMtime:
			defused = append(defused, fmt.Sprintf("set %s from the future to now", plural(n, "modification time", "modification times")))
		default:
			removed = append(removed, plural(n, kindNouns[kind][0], kindNouns[kind][1]))
		}
	}
	if len(removed)+len(defused) == 0 {
		return
	}
	var parts []string
	if len(removed) > 0 {
		parts = append(parts, "removed "+strings.Join(removed, ", ")+" (never allowed there, whatever their age)")
	}
	parts = append(parts, defused...)
	note := fmt.Sprintf("container %q: its log directories held what host tools must not meet: %s",
		c.name, strings.Join(parts, "; "))
	p.m.log.Warn("removed or defused unsafe entries in a container's log directories", "namespace", pod.namespace,
		"pod", pod.name, "container", c.name, "found", c.unsafe)
	p.m.podEvent(pod.namespace, pod.name, pod.uid, ReasonUnsafe, "Retention", note)
}

// kindNouns names the removed kinds in Events, singular and plural.
var kindNouns = map[string][2]string{
	kindSymlink:  {"symlink", "symlinks"},
	kindHardlink: {"hard link", "hard links"},
	kindDevice:   {"device node", "device nodes"},
	kindFIFO:     {"FIFO", "FIFOs"},
	kindSocket:   {"socket", "sockets"},
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// victim is a file that trim may empty and remove.
type victim struct {
	path  []string // from the container directory
	ino   uint64
	mtime time.Time
	bytes int64
}

// trim brings container c, found over its size limit, under it: it
// empties and removes its oldest files (by mtime, a future one counting as
// now) until the disk use is at most limit, keeping (empty) a file written
// within the last Interval, which its writer may hold open: removed, it
// would go on growing where no pass sees it. It records an Event on the
// pod and the metrics, and returns the bytes freed.
func (p *pass) trim(ctrDir *dir, pod podRef, c *container, limit int64) int64 {
	var files []victim
	for _, ln := range c.logDirs {
		logDir, err := ctrDir.openDir(ln)
		if err != nil {
			p.fail(err)
			continue
		}
		p.collect(logDir, []string{ln}, 1, &files)
		logDir.close()
	}
	slices.SortFunc(files, func(a, b victim) int {
		if c := a.mtime.Compare(b.mtime); c != 0 {
			return c
		}
		return slices.Compare(a.path, b.path)
	})
	excess := c.used - limit
	recent := p.now.Add(-p.m.cfg.Interval)
	var freed int64
	var removed, kept int
	for _, v := range files {
		if freed >= excess {
			break
		}
		keep := v.mtime.After(recent)
		if err := p.empty(ctrDir, v, keep); err != nil {
			p.fail(err)
			continue
		}
		freed += v.bytes
		if keep {
			kept++
		} else {
			removed++
		}
	}
	p.stats.OverLimit++
	p.stats.TrimmedFiles += removed + kept
	p.stats.TrimmedBytes += freed
	p.stats.RemovedBytes += freed
	labels := []string{pod.namespace, pod.name, pod.uid, c.name}
	p.m.metrics.overLimit.WithLabelValues(labels...).Inc()
	p.m.metrics.overLimitB.WithLabelValues(labels...).Add(float64(freed))

	note := fmt.Sprintf("container %q: its log directories used %s, over its size limit of %s (%s, or the node's default): "+
		"emptied and removed its %s, %s",
		c.name, quantity(c.used), quantity(limit), filelogs.AnnotationSizeLimit, plural(removed+kept, "oldest file", "oldest files"),
		quantity(freed))
	if kept > 0 {
		note += fmt.Sprintf("; %s written to in the last %s kept, empty, since the app may hold them open",
			plural(kept, "file", "files"), p.m.cfg.Interval)
	}
	if left := c.used - freed; left > limit {
		note += fmt.Sprintf("; still %s over the limit (directories and files that could not be removed)", quantity(left-limit))
	}
	p.m.log.Warn("container over its file-logs size limit", "namespace", pod.namespace, "pod", pod.name,
		"container", c.name, "used_bytes", c.used, "limit_bytes", limit, "emptied_files", removed+kept,
		"kept_files", kept, "freed_bytes", freed)
	p.m.podEvent(pod.namespace, pod.name, pod.uid, ReasonOverLimit, "Retention", note)
	return freed
}

// collect appends the regular files below d (at path from the container
// directory) that use disk space to files.
func (p *pass) collect(d *dir, path []string, depth int, files *[]victim) {
	err := d.each(func(name string) bool {
		st, ok := p.lstat(d, name)
		if !ok || st.Dev != p.dev {
			return true
		}
		switch {
		case isDir(st) && depth < maxDepth:
			sub, err := d.openDir(name)
			if err != nil {
				p.fail(err)
				return true
			}
			p.collect(sub, append(slices.Clip(path), name), depth+1, files)
			sub.close()
		case st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink == 1 && st.Blocks > 0:
			*files = append(*files, victim{path: append(slices.Clip(path), name), ino: st.Ino,
				mtime: minTime(mtime(st), p.now), bytes: st.Blocks * 512})
		}
		return true
	})
	if err != nil {
		p.fail(err)
	}
}

// empty truncates the file v and, unless keep, removes it, walking to it
// again from the container directory without following symlinks.
func (p *pass) empty(ctrDir *dir, v victim, keep bool) error {
	d := ctrDir
	for _, name := range v.path[:len(v.path)-1] {
		sub, err := d.openDir(name)
		if d != ctrDir {
			d.close()
		}
		if err != nil {
			return err
		}
		d = sub
	}
	if d != ctrDir {
		defer d.close()
	}
	name := v.path[len(v.path)-1]
	if err := d.truncateFile(name, v.ino); err != nil {
		return err
	}
	if keep {
		return nil
	}
	return d.unlink(name)
}

func minTime(a, b time.Time) time.Time {
	if a.After(b) {
		return b
	}
	return a
}

// quantity writes bytes as a Kubernetes quantity, e.g. 1536Ki.
func quantity(bytes int64) string { return resource.NewQuantity(bytes, resource.BinarySI).String() }

// lstat is dir.lstat that counts errors; an entry gone meanwhile is no
// error.
func (p *pass) lstat(d *dir, name string) (unix.Stat_t, bool) {
	st, err := d.lstat(name)
	if err != nil {
		if !errors.Is(err, unix.ENOENT) {
			p.fail(err)
		}
		return st, false
	}
	return st, true
}

// account returns the disk space of st, counting a file with several links
// once per pod.
func (p *pass) account(st unix.Stat_t) int64 {
	if !isDir(st) && st.Nlink > 1 {
		if _, ok := p.inodes[st.Ino]; ok {
			return 0
		}
		p.inodes[st.Ino] = struct{}{}
	}
	return st.Blocks * 512
}
