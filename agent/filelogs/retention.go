package filelogs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"

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
	// RemovedBytes is the disk space freed.
	RemovedBytes int64
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
		attrs := []any{"pods", st.Pods, "entries", st.Entries, "bytes", st.Bytes, "removed_files", st.RemovedFiles,
			"removed_pods", st.RemovedPods, "removed_bytes", st.RemovedBytes, "errors", st.Errors,
			"seconds", st.Duration.Seconds()}
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
//   - in each pod directory, files, symlinks and empty directories below
//     the log directories whose mtime is older than Retention are
//     removed (the log directories themselves, the container directories
//     and the metadata files stay while the pod does);
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
	p := &pass{m: m, now: now, cutoff: now.Add(-m.cfg.Retention)}
	series := map[[3]string]struct{}{}
	p.run(ctx, series)
	for s := range m.podSeries {
		if _, ok := series[s]; !ok {
			m.metrics.podBytes.DeleteLabelValues(s[0], s[1], s[2])
		}
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
		used := p.walkPod(root, name, uid)
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

// walkPod removes old entries below the pod's log directories and returns
// the pod directory's disk use.
func (p *pass) walkPod(root *dir, name, uid string) int64 {
	podDir, err := root.openDir(name)
	if err != nil {
		p.fail(err)
		return 0
	}
	defer podDir.close()
	p.inodes = map[uint64]struct{}{}
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
		err = ctrDir.each(func(logName string) bool {
			st, ok := p.lstat(ctrDir, logName)
			if !ok {
				return true
			}
			used += p.account(st)
			if !isDir(st) || st.Dev != p.dev {
				return true
			}
			logDir, err := ctrDir.openDir(logName)
			if err != nil {
				p.fail(err)
				return true
			}
			used += p.ageOut(logDir, 1)
			logDir.close()
			return true
		})
		if err != nil {
			p.fail(err)
		}
		return true
	})
	if err != nil {
		p.fail(err)
	}
	return used
}

// ageOut removes the entries of d older than the cutoff, depth first, and
// returns the disk use of what is left. depth is d's depth below the
// container directory.
func (p *pass) ageOut(d *dir, depth int) int64 {
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
		old := mtime(st).Before(p.cutoff)
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
			used += p.ageOut(sub, depth+1)
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
				if st.Nlink <= 1 {
					p.stats.RemovedBytes += st.Blocks * 512
				}
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
