package filelogs

import (
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"slices"

	"github.com/containerd/nri/pkg/api"
)

// MountOptions are the options of each bind mount: read-write, private
// propagation, and no set-uid programs or device files through it.
var MountOptions = []string{"bind", "rprivate", "rw", "nosuid", "nodev"}

// kubeletLabels are the labels kubelet adds to every pod sandbox; the
// metadata file has the same facts in its own fields.
var kubeletLabels = []string{"io.kubernetes.pod.name", "io.kubernetes.pod.namespace", "io.kubernetes.pod.uid"}

// Dir is one declared directory and its host directory.
type Dir struct {
	// Path is the directory in the container, cleaned, e.g. "/app/logs".
	Path string `json:"path"`
	// Name is the host directory's name inside the container directory,
	// EncodePath(Path), e.g. "app-logs".
	Name string `json:"dir"`
}

// Metadata is what the metadata file (MetadataFile, in each container
// directory) holds, so that a log collector can label the files without
// asking the API server.
type Metadata struct {
	Namespace string            `json:"namespace"`
	Pod       string            `json:"pod"`
	UID       string            `json:"uid"`
	Container string            `json:"container"`
	Paths     []Dir             `json:"paths"`
	Labels    map[string]string `json:"labels"`
	// SizeLimit is the size limit the pod asks for with
	// AnnotationSizeLimit, in bytes; 0 (left out) when it asks for none
	// and the node's default applies.
	SizeLimit int64 `json:"sizeLimitBytes,omitempty"`
}

// Plan is the host side of one container's file logs: where its
// directories go under Root and how they are mounted.
type Plan struct {
	// Root is the host directory all pod directories live in, e.g. "/logs".
	Root string
	// PodDir is the pod's directory name under Root (PodDirName).
	PodDir string
	// Container is the container directory's name inside PodDir: the
	// container's name.
	Container string
	// Dirs are the declared directories, in the order given.
	Dirs []Dir
	// Metadata is the content of the container directory's MetadataFile.
	Metadata Metadata
}

// HostPath returns the host path of d: Root/PodDir/Container/d.Name.
func (p *Plan) HostPath(d Dir) string { return path.Join(p.Root, p.PodDir, p.Container, d.Name) }

// Mounts returns one read-write bind mount per declared directory.
func (p *Plan) Mounts() []*api.Mount {
	mounts := make([]*api.Mount, 0, len(p.Dirs))
	for _, d := range p.Dirs {
		mounts = append(mounts, &api.Mount{
			Destination: d.Path,
			Type:        "bind",
			Source:      p.HostPath(d),
			Options:     slices.Clone(MountOptions),
		})
	}
	return mounts
}

// Adjustment returns the NRI adjustment that adds Mounts.
func (p *Plan) Adjustment() *api.ContainerAdjustment {
	adj := &api.ContainerAdjustment{}
	for _, m := range p.Mounts() {
		adj.AddMount(m)
	}
	return adj
}

// MetadataJSON returns the metadata file's content: indented JSON and a
// final newline.
func (p *Plan) MetadataJSON() []byte {
	b, err := json.MarshalIndent(p.Metadata, "", "  ")
	if err != nil {
		// Strings, a slice and a map of strings always marshal.
		panic(fmt.Sprintf("filelogs: marshal metadata: %v", err))
	}
	return append(b, '\n')
}

// NewPlan returns the plan for ctr, created in pod, or nil when ctr does
// not ask for file logs. root must be absolute and clean. An error is an
// *Error for a bad KUBERNETES_FILELOGS value (including a path that
// collides with a mount ctr already has) and a plain error for pod or
// container names that Kubernetes would not have made.
//
// ctr's mounts are the ones it is created with, before any NRI plugin's
// adjustment.
func NewPlan(root string, pod *api.PodSandbox, ctr *api.Container) (*Plan, error) {
	p, value, err := layout(root, pod, ctr)
	if p == nil || err != nil {
		return nil, err
	}
	if err := checkMounts(value, p.Dirs, ctr.GetMounts()); err != nil {
		return nil, err
	}
	return p, nil
}

// CheckRunning checks a container that already runs (found when the agent
// connects to the runtime): it returns the declared directories that ctr
// has no mount of from its planned host directory, or the error NewPlan
// would have failed its creation with. A container that does not ask for
// file logs has nothing missing.
func CheckRunning(root string, pod *api.PodSandbox, ctr *api.Container) ([]Dir, error) {
	p, _, err := layout(root, pod, ctr)
	if p == nil || err != nil {
		return nil, err
	}
	var missing []Dir
	for _, d := range p.Dirs {
		if !slices.ContainsFunc(ctr.GetMounts(), func(m *api.Mount) bool {
			return path.Clean(m.GetDestination()) == d.Path && m.GetSource() == p.HostPath(d)
		}) {
			missing = append(missing, d)
		}
	}
	return missing, nil
}

// layout parses ctr's KUBERNETES_FILELOGS and lays out its directories; it
// also returns the value, for errors.
func layout(root string, pod *api.PodSandbox, ctr *api.Container) (*Plan, string, error) {
	value, ok := Lookup(ctr.GetEnv())
	if !ok {
		return nil, "", nil
	}
	paths, err := Parse(value)
	if len(paths) == 0 || err != nil {
		return nil, value, err
	}
	for _, n := range []struct{ what, name string }{
		{"namespace", pod.GetNamespace()}, {"pod name", pod.GetName()}, {"container name", ctr.GetName()},
	} {
		if err := checkName(n.name); err != nil {
			return nil, value, fmt.Errorf("file logs: %s %q %w", n.what, n.name, err)
		}
	}
	if err := checkUID(pod.GetUid()); err != nil {
		return nil, value, fmt.Errorf("file logs: pod UID %q %w", pod.GetUid(), err)
	}
	p := &Plan{
		Root:      root,
		PodDir:    PodDirName(pod.GetNamespace(), pod.GetName(), pod.GetUid()),
		Container: ctr.GetName(),
		Dirs:      make([]Dir, 0, len(paths)),
	}
	for _, cp := range paths {
		p.Dirs = append(p.Dirs, Dir{Path: cp, Name: EncodePath(cp)})
	}
	labels := maps.Clone(pod.GetLabels())
	if labels == nil {
		labels = map[string]string{}
	}
	for _, k := range kubeletLabels {
		delete(labels, k)
	}
	p.Metadata = Metadata{
		Namespace: pod.GetNamespace(),
		Pod:       pod.GetName(),
		UID:       pod.GetUid(),
		Container: ctr.GetName(),
		Paths:     p.Dirs,
		Labels:    labels,
	}
	return p, value, nil
}

// checkMounts fails when a declared directory clashes with one of mounts:
// the same destination, a mount inside the directory (the bind mount
// would hide it, or it would hide part of the logs), or a read-only mount
// the directory is inside (the runtime could not make its mount point).
func checkMounts(value string, dirs []Dir, mounts []*api.Mount) error {
	for _, d := range dirs {
		for _, m := range mounts {
			dst := m.GetDestination()
			if !path.IsAbs(dst) {
				continue
			}
			dst = path.Clean(dst)
			switch {
			case dst == d.Path:
				return newError(value, RuleCollision, "path %q collides with the container's mount at %q", d.Path, dst)
			case isUnder(dst, d.Path):
				return newError(value, RuleCollision, "path %q would hide the container's mount at %q", d.Path, dst)
			case isUnder(d.Path, dst) && slices.Contains(m.GetOptions(), "ro"):
				return newError(value, RuleCollision, "path %q is inside the read-only mount at %q", d.Path, dst)
			}
		}
	}
	return nil
}
