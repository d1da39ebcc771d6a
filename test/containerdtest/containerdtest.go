// Package containerdtest runs a containerd of a test's own: its root,
// state, gRPC socket and NRI socket live in a temporary directory, the
// local busybox and pause images are imported into it, and the test talks
// to it through CRI (k8s.io/cri-api), as kubelet does. It never touches
// the local cluster's containerd (/run/containerd); only the shims'
// sockets go to containerd's compiled-in /run/containerd/s/, under names
// hashed from this containerd's own socket (that directory, and
// /run/containerd, are removed at the end if the test made them and they
// are empty). Pods
// get a cgroup parent of their own, removed at the end.
//
// It needs root (tests fail, not skip, without it), the containerd and
// runc that test/cluster/build.sh builds into $BERTH_CACHE, and the image
// tarballs of `make images`. Override their places with
// BERTH_CONTAINERD_BIN (directory of containerd, ctr and
// containerd-shim-runc-v2), BERTH_RUNC (the runc binary) and BERTH_IMAGES
// (directory of busybox.tar, busybox.ref, pause.tar).
//
// Pods should use the host network (NamespaceMode_NODE): no CNI is set up.
package containerdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/mount-utils"
)

// PauseImage is the sandbox image the config pins; `make images` builds it.
const PauseImage = "registry.k8s.io/pause:3.10"

// Containerd is a running containerd.
type Containerd struct {
	// Dir holds everything: config, root, state, sockets, log.
	Dir string
	// Address is the gRPC (CRI) socket.
	Address string
	// NRISocket is the NRI socket plugins connect to.
	NRISocket string
	// Runtime and Images are CRI clients.
	Runtime runtimeapi.RuntimeServiceClient
	Images  runtimeapi.ImageServiceClient
	// TestImage is the busybox test image's reference.
	TestImage string

	// made lists the shared directories (shim sockets) this test created.
	made   []string
	cmd    *exec.Cmd
	cancel context.CancelFunc
	conn   *grpc.ClientConn
}

// Paths are where the binaries and images are.
type Paths struct {
	ContainerdBin string // directory with containerd, ctr, containerd-shim-runc-v2
	Runc          string
	Images        string // directory with busybox.tar, busybox.ref, pause.tar
}

// FindPaths returns the paths from the environment or the defaults, and an
// error that says how to make what is missing.
func FindPaths() (Paths, error) {
	repo, err := repoRoot()
	if err != nil {
		return Paths{}, err
	}
	versions, err := readVersions(filepath.Join(repo, "test", "cluster", "versions.sh"))
	if err != nil {
		return Paths{}, err
	}
	cache := os.Getenv("BERTH_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return Paths{}, err
			}
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, "berth")
	}
	p := Paths{
		ContainerdBin: envOr("BERTH_CONTAINERD_BIN", filepath.Join(cache, "containerd-"+versions["CONTAINERD_VERSION"], "bin")),
		Runc:          envOr("BERTH_RUNC", filepath.Join(cache, "runc-"+versions["RUNC_VERSION"], "bin", "runc")),
		Images:        envOr("BERTH_IMAGES", filepath.Join(repo, "_output", "images")),
	}
	for _, f := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
		if _, err := os.Stat(filepath.Join(p.ContainerdBin, f)); err != nil {
			return p, fmt.Errorf("containerd binaries: %w: run `test/cluster/build.sh containerd runc` (or `make up`), or set BERTH_CONTAINERD_BIN", err)
		}
	}
	if _, err := os.Stat(p.Runc); err != nil {
		return p, fmt.Errorf("runc: %w: run `test/cluster/build.sh runc`, or set BERTH_RUNC", err)
	}
	for _, f := range []string{"busybox.tar", "busybox.ref", "pause.tar"} {
		if _, err := os.Stat(filepath.Join(p.Images, f)); err != nil {
			return p, fmt.Errorf("test images: %w: run `make images`, or set BERTH_IMAGES", err)
		}
	}
	return p, nil
}

// Start starts a containerd with NRI on, imports the test images, and
// stops it and removes everything when the test ends. It fails the test
// when it cannot.
func Start(t testing.TB) *Containerd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("containerdtest: needs root")
	}
	paths, err := FindPaths()
	if err != nil {
		t.Fatalf("containerdtest: %v", err)
	}
	// Short: unix socket paths have at most 107 bytes.
	dir, err := os.MkdirTemp("", "berth-ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Containerd{
		Dir:       dir,
		Address:   filepath.Join(dir, "containerd.sock"),
		NRISocket: filepath.Join(dir, "nri.sock"),
	}
	for _, d := range []string{shimSocketParent, shimSocketDir} {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			c.made = append(c.made, d)
		}
	}
	t.Cleanup(func() { c.stop(t) })
	ref, err := os.ReadFile(filepath.Join(paths.Images, "busybox.ref"))
	if err != nil {
		t.Fatal(err)
	}
	c.TestImage = strings.TrimSpace(string(ref))
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(c.config(paths)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"cni/bin", "cni/conf", "nri/plugins", "nri/conf"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// Stopping is SIGTERM, then SIGKILL after 15 s.
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.cmd = exec.CommandContext(ctx, filepath.Join(paths.ContainerdBin, "containerd"), "--config", filepath.Join(dir, "config.toml"))
	c.cmd.Cancel = func() error { return c.cmd.Process.Signal(syscall.SIGTERM) }
	c.cmd.WaitDelay = 15 * time.Second
	c.cmd.Env = append(os.Environ(), "PATH="+paths.ContainerdBin+":"+os.Getenv("PATH"))
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("containerdtest: start containerd: %v", err)
	}

	c.conn, err = grpc.NewClient("unix://"+c.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	c.Runtime, c.Images = runtimeapi.NewRuntimeServiceClient(c.conn), runtimeapi.NewImageServiceClient(c.conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Runtime.Version(ctx, &runtimeapi.VersionRequest{})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerdtest: containerd not serving CRI within 30s: %v\n%s", err, c.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, tar := range []string{"pause.tar", "busybox.tar"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, filepath.Join(paths.ContainerdBin, "ctr"), "--address", c.Address,
			"-n", "k8s.io", "images", "import", "--no-unpack=false", filepath.Join(paths.Images, tar)).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("containerdtest: import %s: %v\n%s", tar, err, out)
		}
	}
	return c
}

func (c *Containerd) config(p Paths) string {
	return fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %[5]q
[plugins."io.containerd.cri.v1.runtime"]
  # This host lacks CAP_SYS_RESOURCE: lowering oom_score_adj would fail every sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = false
      BinaryName = %[6]q
      Root = %[12]q
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%[7]q]
    conf_dir = %[8]q
[plugins."io.containerd.nri.v1.nri"]
  disable = false
  socket_path = %[9]q
  plugin_path = %[10]q
  plugin_config_path = %[11]q
  # Rejects nothing by itself; pods may require plugins by annotation
  # (required-plugins.noderesource.dev).
  [plugins."io.containerd.nri.v1.nri".default_validator]
    enable = true
`, filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state"), c.Address, c.Address+".ttrpc", PauseImage, p.Runc,
		filepath.Join(c.Dir, "cni", "bin"), filepath.Join(c.Dir, "cni", "conf"), c.NRISocket,
		filepath.Join(c.Dir, "nri", "plugins"), filepath.Join(c.Dir, "nri", "conf"), filepath.Join(c.Dir, "runc"))
}

// CgroupParent is the cgroup (cgroupfs driver) RunPod puts pods under;
// it is removed when the test ends.
func (c *Containerd) CgroupParent() string { return "/" + filepath.Base(c.Dir) }

// removeCgroups removes CgroupParent from every cgroup hierarchy (v1
// controllers and v2); they are empty once the pods are gone.
func (c *Containerd) removeCgroups(t testing.TB) {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*" + c.CgroupParent())
	dirs = append(dirs, "/sys/fs/cgroup"+c.CgroupParent())
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("containerdtest: %v", err)
		}
	}
}

// Log returns containerd's log so far.
func (c *Containerd) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "containerd.log"))
	return string(b)
}

// stop removes every pod, stops containerd, unmounts what is left below
// Dir and removes it.
func (c *Containerd) stop(t testing.TB) {
	if c.cmd != nil && c.cmd.Process != nil && c.Runtime != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if pods, err := c.Runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, p := range pods.GetItems() {
				_, _ = c.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.GetId()})
				_, _ = c.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.GetId()})
			}
		}
		cancel()
	}
	if c.conn != nil {
		c.conn.Close()
	}
	if c.cmd != nil && c.cmd.Process != nil {
		c.cancel()
		_ = c.cmd.Wait()
	}
	c.removeCgroups(t)
	for _, m := range mountsBelow(c.Dir) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			t.Errorf("containerdtest: unmount %s: %v", m, err)
		}
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		t.Errorf("containerdtest: %v", err)
	}
	// Deepest first; a directory another containerd still uses is not
	// empty and stays.
	for i := len(c.made) - 1; i >= 0; i-- {
		_ = os.Remove(c.made[i])
	}
}

// containerd puts shim sockets here whatever its configuration says.
const (
	shimSocketParent = "/run/containerd"
	shimSocketDir    = "/run/containerd/s"
)

// mountsBelow lists the mount points below dir, deepest first.
func mountsBelow(dir string) []string {
	mounts, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, m := range mounts {
		if strings.HasPrefix(m.MountPoint, dir+"/") {
			out = append(out, m.MountPoint)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return out
}

// RunPod runs a pod sandbox in the host's network namespace, so that no
// CNI is needed, and returns its ID and config. annotations may be nil.
func (c *Containerd) RunPod(ctx context.Context, namespace, name, uid string, annotations map[string]string) (string, *runtimeapi.PodSandboxConfig, error) {
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:    &runtimeapi.PodSandboxMetadata{Name: name, Namespace: namespace, Uid: uid},
		Annotations: annotations,
		Labels: map[string]string{"app": name, "io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
			"io.kubernetes.pod.uid": uid},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: c.CgroupParent(),
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
	rsp, err := c.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return "", nil, fmt.Errorf("run pod %s/%s: %w", namespace, name, err)
	}
	return rsp.GetPodSandboxId(), cfg, nil
}

// ContainerConfig is a container of the test image running args, with env
// ("KEY=value").
func (c *Containerd) ContainerConfig(name string, attempt uint32, env []string, args ...string) *runtimeapi.ContainerConfig {
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name, Attempt: attempt},
		Image:    &runtimeapi.ImageSpec{Image: c.TestImage},
		Command:  args,
	}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		cfg.Envs = append(cfg.Envs, &runtimeapi.KeyValue{Key: k, Value: []byte(v)})
	}
	return cfg
}

// WaitExited waits until the container has exited and returns its exit
// code.
func (c *Containerd) WaitExited(ctx context.Context, id string) (int32, error) {
	for {
		rsp, err := c.Runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			return 0, err
		}
		if rsp.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
			return rsp.GetStatus().GetExitCode(), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("container %s still %s: %w", id, rsp.GetStatus().GetState(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func repoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot find the repository")
	}
	return filepath.Join(filepath.Dir(file), "..", ".."), nil
}

// readVersions reads the NAME=value lines of versions.sh.
func readVersions(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	v := map[string]string{}
	for line := range bytes.Lines(b) {
		k, val, ok := strings.Cut(strings.TrimSpace(string(line)), "=")
		if ok && !strings.HasPrefix(k, "#") {
			v[k] = val
		}
	}
	return v, nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
