// Package netnstest puts the host's named-network-namespace directory back
// as a test binary found it. Creating a named namespace (`ip netns add`,
// or the CNI plugins' testutils.NewNS) makes /run/netns a shared bind mount
// of itself, and creates the directory if needed; both outlive the test.
// Call Run from TestMain.
package netnstest

import (
	"errors"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"
)

// Dir is where named network namespaces are mounted.
const Dir = "/run/netns"

// Run runs the tests, then unmounts Dir if it was not a mount point before
// and removes it if it did not exist, each only if no namespace is left in
// it (another test binary running at the same time may still use it).
func Run(m *testing.M) int {
	_, err := os.Stat(Dir)
	existed := !errors.Is(err, os.ErrNotExist)
	wasMount := isMountPoint(Dir)
	code := m.Run()
	if entries, err := os.ReadDir(Dir); err != nil || len(entries) > 0 {
		return code
	}
	if !wasMount && isMountPoint(Dir) {
		// Not lazily: a namespace mounted meanwhile keeps it busy, and in use.
		_ = unix.Unmount(Dir, 0)
	}
	if !existed {
		_ = os.Remove(Dir) // fails if not empty
	}
	return code
}

// isMountPoint reports whether dir is a mount point in this mount namespace
// (a bind mount of a directory on itself included, which a device
// comparison would miss).
func isMountPoint(dir string) bool {
	mounts, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	return slices.ContainsFunc(mounts, func(m mount.MountInfo) bool { return m.MountPoint == dir })
}
