// Package filelogs is the agent's half of Berth's file logs: as an NRI
// hook it makes the host directories that hooks/filelogs plans for a
// container asking for KUBERNETES_FILELOGS, writes their metadata file and
// returns the bind mounts; it follows the runtime's pods to know which are
// gone, warns about running containers that lack their mounts, and, as a
// runnable, removes old files and gone pods' directories (retention).
//
// Every file-system operation below the root goes through directory
// descriptors (openat, unlinkat, ...) with O_NOFOLLOW: a symlink a
// container plants in its log directory is removed, never followed.
package logdirs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/containerd/nri/pkg/api"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"

	"github.com/berth-io/berth/hooks/filelogs"
)

// Defaults for Config.
const (
	DefaultRoot      = "/logs"
	DefaultRetention = 48 * time.Hour
	DefaultInterval  = 10 * time.Minute
	// DefaultSizeLimit is the default size limit of one container's file
	// logs, all its log directories together: 1Gi.
	DefaultSizeLimit int64 = 1 << 30
	// DefaultMaxSizeLimit is the default of the largest limit a pod may
	// ask for with filelogs.AnnotationSizeLimit: 10Gi.
	DefaultMaxSizeLimit int64 = 10 << 30
)

// Modes of the directories Berth makes. The root and the pod directories
// are root's with mode 0750 (privateMode; retention keeps them so). A log
// directory (the one mounted into the container) is owned by the
// container's user when the runtime says who that is (NRI Container.User)
// and then has mode 0755; otherwise it is root's with mode 0777, as kubelet
// makes an emptyDir, so that a container running as any user can write to
// it.
const (
	podDirMode       = privateMode
	containerDirMode = 0o755
	logDirModeOwned  = 0o755
	logDirModeShared = 0o777
)

// Reasons of the Events the manager records on pods.
const (
	ReasonRejected   = "FileLogsRejected"    // a bad KUBERNETES_FILELOGS value or size-limit annotation failed CreateContainer
	ReasonFailed     = "FileLogsFailed"      // the host directories could not be made; CreateContainer failed
	ReasonNotMounted = "FileLogsNotMounted"  // found running without its mounts at a (re)connect
	ReasonUnsafe     = "FileLogsUnsafeFiles" // retention removed or defused what a container planted
	ReasonOverLimit  = "FileLogsOverLimit"   // retention found a container over its size limit
)

// Name is the hook's name, in errors and logs ("hook filelogs: ...").
const Name = "filelogs"

// Config configures a Manager. The zero value of each field means its default.
type Config struct {
	// Root is the host directory holding the pod directories; absolute. It
	// must be the same path in the agent's mount namespace and on the
	// host, since the runtime resolves the mount sources. Made if missing.
	// Default DefaultRoot.
	Root string
	// Retention is how long files are kept: files older than it (by
	// mtime) are removed, and a pod's directory is removed once the pod
	// has been gone from the node for this long. Default DefaultRetention.
	Retention time.Duration
	// Interval is the time between retention passes. Default
	// DefaultInterval.
	Interval time.Duration
	// SizeLimit is the size limit of one container's file logs, all its
	// log directories together, in bytes, unless its pod asks for another
	// with filelogs.AnnotationSizeLimit. A pass that finds a container
	// over it removes its oldest files until it is under. Default
	// DefaultSizeLimit.
	SizeLimit int64
	// MaxSizeLimit is the largest size limit a pod may ask for, in bytes;
	// at least SizeLimit. Default DefaultMaxSizeLimit, or SizeLimit if
	// that is larger.
	MaxSizeLimit int64
	// Logger receives the manager's logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer gets the metrics. Nil means they are not exported.
	Registerer prometheus.Registerer
	// Recorder records Warning Events on pods. Nil means none.
	Recorder events.EventRecorder
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Manager is the file-logs hook (nriplugin.Hook, with the optional
// Synchronize, RunPodSandbox and RemovePodSandbox hooks) and the retention
// runnable (Start).
type Manager struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	passMu sync.Mutex // one retention pass at a time

	mu sync.Mutex
	// synced is set by the first Synchronize: from then on live lists
	// every pod of the runtime, and a pod directory whose UID is not in it
	// belongs to a pod that is gone.
	synced bool
	// live maps pod UIDs to the IDs of their sandboxes.
	live map[string]map[string]struct{}
	// reported holds, per pod UID, the problems already logged and
	// recorded as Events: kubelet retries a failed container every few
	// seconds to minutes, and one line and one Event say it.
	reported map[string]map[string]struct{}
	// podSeries holds the label values of berth_agent_filelogs_pod_bytes
	// set by the last pass, to delete those of removed pods.
	podSeries map[[3]string]struct{}
}

// New validates cfg, sets its defaults, makes the root if it is missing
// and registers the metrics.
func New(cfg Config) (*Manager, error) {
	if cfg.Root == "" {
		cfg.Root = DefaultRoot
	}
	if !filepath.IsAbs(cfg.Root) || filepath.Clean(cfg.Root) != cfg.Root {
		return nil, fmt.Errorf("root %q: want an absolute, clean path", cfg.Root)
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.Retention < 0 {
		return nil, fmt.Errorf("retention %s: want > 0", cfg.Retention)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Interval < 0 {
		return nil, fmt.Errorf("retention interval %s: want > 0", cfg.Interval)
	}
	if cfg.SizeLimit == 0 {
		cfg.SizeLimit = DefaultSizeLimit
	}
	if cfg.SizeLimit < 0 {
		return nil, fmt.Errorf("size limit %d: want > 0", cfg.SizeLimit)
	}
	if cfg.MaxSizeLimit == 0 {
		cfg.MaxSizeLimit = max(DefaultMaxSizeLimit, cfg.SizeLimit)
	}
	if cfg.MaxSizeLimit < cfg.SizeLimit {
		return nil, fmt.Errorf("maximum size limit %d: want at least the size limit, %d", cfg.MaxSizeLimit, cfg.SizeLimit)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Root, privateMode); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	mets, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:       cfg,
		log:       cfg.Logger.With("component", Name),
		metrics:   mets,
		live:      map[string]map[string]struct{}{},
		reported:  map[string]map[string]struct{}{},
		podSeries: map[[3]string]struct{}{},
	}
	// Made private now, not only at the first pass: an existing root made
	// by hand or by an older Berth may be open to every host user.
	root, err := openRoot(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	defer root.close()
	if err := m.secure(root); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	return m, nil
}

// secure makes d, the root or a pod directory, root's with at most
// privateMode, and logs what it changed.
func (m *Manager) secure(d *dir) error {
	was, changed, err := d.secure()
	if changed {
		m.log.Info("made a file-logs directory private to root", "dir", d.path,
			"mode_was", fmt.Sprintf("%#o", was.Mode&0o7777), "uid_was", was.Uid)
	}
	return err
}

// Name implements nriplugin.Hook.
func (m *Manager) Name() string { return Name }

// CreateContainer implements nriplugin.Hook: for a container asking for
// file logs it makes the host directories and the metadata file and
// returns the bind mounts. A bad value, or directories that cannot be
// made, fail the container's creation with an error that says so; it is
// logged and recorded as a Warning Event on the pod once.
func (m *Manager) CreateContainer(pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error) {
	m.podRunning(pod)
	plan, err := filelogs.NewPlan(m.cfg.Root, pod, ctr)
	if err != nil {
		m.metrics.containers.WithLabelValues(resultRejected).Inc()
		m.reportOnce(pod, ctr.GetName(), ReasonRejected, err)
		return nil, err
	}
	if plan == nil {
		return nil, nil
	}
	limit, set, err := filelogs.SizeLimit(pod.GetAnnotations(), m.cfg.MaxSizeLimit)
	if err != nil {
		m.metrics.containers.WithLabelValues(resultRejected).Inc()
		m.reportOnce(pod, ctr.GetName(), ReasonRejected, err)
		return nil, err
	}
	if set {
		plan.Metadata.SizeLimit = limit
	}
	if err := m.prepare(plan, ctr.GetUser()); err != nil {
		value, _ := filelogs.Lookup(ctr.GetEnv())
		err = fmt.Errorf("%s=%q: cannot make the host directories: %w", filelogs.EnvName, value, err)
		m.metrics.containers.WithLabelValues(resultFailed).Inc()
		m.reportOnce(pod, ctr.GetName(), ReasonFailed, err)
		return nil, err
	}
	m.metrics.containers.WithLabelValues(resultMounted).Inc()
	m.log.Debug("file logs mounted", "namespace", pod.GetNamespace(), "pod", pod.GetName(),
		"container", ctr.GetName(), "dir", filepath.Join(plan.Root, plan.PodDir, plan.Container))
	return plan.Adjustment(), nil
}

// prepare makes the plan's directories and writes its metadata file.
func (m *Manager) prepare(plan *filelogs.Plan, user *api.User) error {
	root, err := openRoot(plan.Root)
	if err != nil {
		return err
	}
	defer root.close()
	podDir, err := root.mkdirOpen(plan.PodDir, podDirMode, nil)
	if err != nil {
		return err
	}
	defer podDir.close()
	// Made by an older Berth, or by hand: private before it is used.
	if err := m.secure(podDir); err != nil {
		return err
	}
	// The pod is running: whatever said it was gone is stale.
	if err := podDir.unlink(filelogs.GoneFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	ctrDir, err := podDir.mkdirOpen(plan.Container, containerDirMode, nil)
	if err != nil {
		return err
	}
	defer ctrDir.close()
	mode, owner := uint32(logDirModeShared), (*[2]int)(nil)
	if user != nil {
		mode, owner = logDirModeOwned, &[2]int{int(user.GetUid()), int(user.GetGid())}
	}
	for _, d := range plan.Dirs {
		logDir, err := ctrDir.mkdirOpen(d.Name, mode, owner)
		if err != nil {
			return err
		}
		logDir.close()
	}
	return ctrDir.writeFile(filelogs.MetadataFile, plan.MetadataJSON())
}

// Synchronize implements nriplugin.SynchronizeHook: it learns the pods the
// runtime has, and warns about each running container that asks for file
// logs but lacks its mounts (it was created while the agent was not
// connected, and NRI fails open): a Warning Event on its pod, a log line,
// and the gauge berth_agent_filelogs_unmounted_containers.
func (m *Manager) Synchronize(_ context.Context, pods []*api.PodSandbox, ctrs []*api.Container) {
	byID := make(map[string]*api.PodSandbox, len(pods))
	live := make(map[string]map[string]struct{}, len(pods))
	for _, pod := range pods {
		byID[pod.GetId()] = pod
		addSandbox(live, pod)
	}
	m.mu.Lock()
	m.live, m.synced = live, true
	for uid := range m.reported {
		if _, ok := live[uid]; !ok {
			delete(m.reported, uid)
		}
	}
	m.mu.Unlock()

	unmounted := 0
	for _, ctr := range ctrs {
		switch ctr.GetState() {
		case api.ContainerState_CONTAINER_CREATED, api.ContainerState_CONTAINER_RUNNING, api.ContainerState_CONTAINER_PAUSED:
		default:
			continue // a stopped container's next start is a new CreateContainer
		}
		pod, ok := byID[ctr.GetPodSandboxId()]
		if !ok {
			continue
		}
		missing, err := filelogs.CheckRunning(m.cfg.Root, pod, ctr)
		if err == nil && len(missing) == 0 {
			continue
		}
		unmounted++
		value, _ := filelogs.Lookup(ctr.GetEnv())
		var note string
		if err != nil {
			note = fmt.Sprintf("container %q runs without file logs: %v; it was created while %s was not connected to the runtime",
				ctr.GetName(), err, "berth-agent")
		} else {
			paths := make([]string, 0, len(missing))
			for _, d := range missing {
				paths = append(paths, d.Path)
			}
			note = fmt.Sprintf("container %q asks for file logs (%s=%q) but runs without a host directory at %s: "+
				"it was created while berth-agent was not connected to the runtime; delete the pod to get them",
				ctr.GetName(), filelogs.EnvName, value, strings.Join(paths, ", "))
		}
		m.log.Warn("container runs without its file logs", "namespace", pod.GetNamespace(), "pod", pod.GetName(),
			"container", ctr.GetName(), "value", value, "err", err)
		m.event(pod, ReasonNotMounted, "Synchronize", note)
	}
	m.metrics.unmounted.Set(float64(unmounted))
}

// RunPodSandbox implements nriplugin.RunPodSandboxHook.
func (m *Manager) RunPodSandbox(_ context.Context, pod *api.PodSandbox) { m.podRunning(pod) }

// RemovePodSandbox implements nriplugin.RemovePodSandboxHook: when a pod's
// last sandbox is removed the pod is gone from the node, and its directory
// (if it has one) records since when (filelogs.GoneFile).
func (m *Manager) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) {
	uid := pod.GetUid()
	m.mu.Lock()
	ids := m.live[uid]
	delete(ids, pod.GetId())
	gone := len(ids) == 0
	if gone {
		delete(m.live, uid)
		delete(m.reported, uid)
	}
	m.mu.Unlock()
	if !gone {
		return
	}
	name := filelogs.PodDirName(pod.GetNamespace(), pod.GetName(), uid)
	if _, _, _, ok := filelogs.ParsePodDirName(name); !ok {
		return // not a pod Berth could have made a directory for
	}
	if err := m.markGone(name, m.cfg.Now()); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.log.Warn("cannot mark a pod's log directory as gone", "dir", filepath.Join(m.cfg.Root, name), "err", err)
	}
}

// podRunning records that pod has a sandbox in the runtime.
func (m *Manager) podRunning(pod *api.PodSandbox) {
	m.mu.Lock()
	defer m.mu.Unlock()
	addSandbox(m.live, pod)
}

func addSandbox(live map[string]map[string]struct{}, pod *api.PodSandbox) {
	ids := live[pod.GetUid()]
	if ids == nil {
		ids = map[string]struct{}{}
		live[pod.GetUid()] = ids
	}
	ids[pod.GetId()] = struct{}{}
}

// isLive reports whether the pod with uid may still run: it has a
// sandbox, or the manager has not yet learnt the runtime's pods.
func (m *Manager) isLive(uid string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.isLiveLocked(uid)
}

func (m *Manager) isLiveLocked(uid string) bool {
	_, ok := m.live[uid]
	return ok || !m.synced
}

// knownLive reports whether the pod with uid is known to have a sandbox.
func (m *Manager) knownLive(uid string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.live[uid]
	return ok && m.synced
}

// markGone writes GoneFile with t into the pod directory name, unless it
// is there already.
func (m *Manager) markGone(name string, t time.Time) error {
	root, err := openRoot(m.cfg.Root)
	if err != nil {
		return err
	}
	defer root.close()
	podDir, err := root.openDir(name)
	if err != nil {
		return err
	}
	defer podDir.close()
	if _, err := podDir.lstat(filelogs.GoneFile); err == nil {
		return nil
	}
	return podDir.writeFile(filelogs.GoneFile, []byte(t.UTC().Format(time.RFC3339Nano)+"\n"))
}

// reportOnce logs err and records it as a Warning Event on pod, once per
// pod, container and error.
func (m *Manager) reportOnce(pod *api.PodSandbox, container, reason string, err error) {
	key := container + "\x00" + err.Error()
	m.mu.Lock()
	seen := m.reported[pod.GetUid()]
	if seen == nil {
		seen = map[string]struct{}{}
		m.reported[pod.GetUid()] = seen
	}
	_, dup := seen[key]
	seen[key] = struct{}{}
	m.mu.Unlock()
	if dup {
		return
	}
	msg := "file logs rejected"
	if reason == ReasonFailed {
		msg = "file logs failed"
	}
	m.log.Warn(msg, "namespace", pod.GetNamespace(), "pod", pod.GetName(), "container", container, "err", err)
	m.event(pod, reason, "CreateContainer", fmt.Sprintf("container %q: %v", container, err))
}

// event records a Warning Event on pod, which NRI identifies by namespace,
// name and UID: no API lookup is needed.
func (m *Manager) event(pod *api.PodSandbox, reason, action, note string) {
	m.podEvent(pod.GetNamespace(), pod.GetName(), pod.GetUid(), reason, action, note)
}

// podEvent records a Warning Event on the pod namespace/name with uid.
func (m *Manager) podEvent(namespace, name, uid, reason, action, note string) {
	if m.cfg.Recorder == nil {
		return
	}
	obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Namespace: namespace, Name: name, UID: types.UID(uid),
	}}
	m.cfg.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, reason, action, "%s", truncate(note, maxNoteLen))
}

// maxNoteLen is the longest note the API server takes in an Event.
const maxNoteLen = 1024

// truncate cuts s to at most n bytes on a UTF-8 boundary, ending in "...".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
