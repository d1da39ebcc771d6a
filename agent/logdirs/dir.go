package logdirs

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// maxDepth bounds how deep the retention walk goes below a log directory;
// a container can make arbitrarily deep trees, and each level holds an
// open descriptor.
const maxDepth = 128

// errSymlink is returned when a path component Berth made is a symlink.
var errSymlink = errors.New("is a symbolic link")

// dir is an open directory. Every operation names an entry of it relative
// to its descriptor (the *at system calls) and never follows a symlink in
// that entry, so nothing a container plants in its log directory can send
// Berth outside the root. Only the root itself is opened by path.
type dir struct {
	fd   int
	path string // for errors
}

// openRoot opens the directory at path, following symlinks: it is the
// operator's configured root, not something a container controls.
func openRoot(path string) (*dir, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &dir{fd: fd, path: path}, nil
}

func (d *dir) close() { unix.Close(d.fd) }

func (d *dir) join(name string) string { return d.path + "/" + name }

// openDir opens the directory name; a symlink there is an error.
func (d *dir) openDir(name string) (*dir, error) {
	for {
		fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		switch {
		case err == nil:
			return &dir{fd: fd, path: d.join(name)}, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR):
			// O_NOFOLLOW|O_DIRECTORY on a symlink gives either.
			if st, serr := d.lstat(name); serr == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				return nil, fmt.Errorf("open %s: %w", d.join(name), errSymlink)
			}
		}
		return nil, fmt.Errorf("open %s: %w", d.join(name), err)
	}
}

// mkdirOpen makes the directory name unless it exists and opens it. A new
// directory gets exactly mode (whatever the umask), and uid and gid when
// owner is set; an existing one is left as it is.
func (d *dir) mkdirOpen(name string, mode uint32, owner *[2]int) (*dir, error) {
	err := unix.Mkdirat(d.fd, name, 0o700)
	created := err == nil
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("mkdir %s: %w", d.join(name), err)
	}
	sub, err := d.openDir(name)
	if err != nil {
		return nil, err
	}
	if !created {
		return sub, nil
	}
	if owner != nil {
		if err := unix.Fchown(sub.fd, owner[0], owner[1]); err != nil {
			sub.close()
			return nil, fmt.Errorf("chown %s: %w", sub.path, err)
		}
	}
	if err := unix.Fchmod(sub.fd, mode); err != nil {
		sub.close()
		return nil, fmt.Errorf("chmod %s: %w", sub.path, err)
	}
	return sub, nil
}

// lstat returns the status of the entry name, not following a symlink.
func (d *dir) lstat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := ignoringEINTR(func() error { return unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) })
	if err != nil {
		return st, fmt.Errorf("lstat %s: %w", d.join(name), err)
	}
	return st, nil
}

func (d *dir) stat() (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return st, fmt.Errorf("stat %s: %w", d.path, err)
	}
	return st, nil
}

// unlink removes the entry name, which is not a directory (a symlink is
// removed, not what it points to).
func (d *dir) unlink(name string) error {
	if err := unix.Unlinkat(d.fd, name, 0); err != nil {
		return fmt.Errorf("remove %s: %w", d.join(name), err)
	}
	return nil
}

// rmdir removes the empty directory name.
func (d *dir) rmdir(name string) error {
	if err := unix.Unlinkat(d.fd, name, unix.AT_REMOVEDIR); err != nil {
		return fmt.Errorf("remove %s: %w", d.join(name), err)
	}
	return nil
}

// rename renames the entry oldName to newName, both in d.
func (d *dir) rename(oldName, newName string) error {
	if err := unix.Renameat(d.fd, oldName, d.fd, newName); err != nil {
		return fmt.Errorf("rename %s to %s: %w", d.join(oldName), newName, err)
	}
	return nil
}

// writeFile replaces the file name with data, mode 0644: it writes a
// temporary file next to it and renames it over name, so readers see the
// old or the new content, never a part. A symlink at the temporary name
// fails the write instead of being followed.
func (d *dir) writeFile(name string, data []byte) error {
	tmp := name + ".tmp"
	fd, err := unix.Openat(d.fd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", d.join(tmp), err)
	}
	err = writeAll(fd, data)
	if err == nil {
		err = unix.Fchmod(fd, 0o644)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		_ = unix.Unlinkat(d.fd, tmp, 0)
		return fmt.Errorf("write %s: %w", d.join(tmp), err)
	}
	return d.rename(tmp, name)
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// readFile reads at most limit bytes of the regular file name.
func (d *dir) readFile(name string, limit int) ([]byte, error) {
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", d.join(name), err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("read %s: %w", d.join(name), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("read %s: not a regular file", d.join(name))
	}
	buf := make([]byte, limit)
	n := 0
	for n < limit {
		m, err := unix.Read(fd, buf[n:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", d.join(name), err)
		}
		if m == 0 {
			break
		}
		n += m
	}
	return buf[:n], nil
}

// each calls fn with each entry's name (not "." or ".."), reading the
// directory in batches, until fn returns false. Entries fn removes do not
// upset the reading.
func (d *dir) each(fn func(name string) bool) error {
	buf := make([]byte, 16<<10)
	var names []string
	for {
		n, err := unix.Getdents(d.fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read directory %s: %w", d.path, err)
		}
		if n <= 0 {
			return nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names[:0])
		for _, name := range names {
			if !fn(name) {
				return nil
			}
		}
	}
}

// removeAll removes the entry name and, if it is a directory, everything
// below it, depth first, without following symlinks. It never descends
// into a file system other than dev (a mount point is an error and stays)
// nor deeper than maxDepth. It returns the first error, having removed
// what it could, and the bytes it freed (blocks of files whose last link
// it removed).
func (d *dir) removeAll(name string, dev uint64, depth int) (freed int64, err error) {
	st, err := d.lstat(name)
	if errors.Is(err, unix.ENOENT) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if !isDir(st) {
		if err := d.unlink(name); err != nil && !errors.Is(err, unix.ENOENT) {
			return 0, err
		}
		if st.Nlink <= 1 {
			freed = st.Blocks * 512
		}
		return freed, nil
	}
	if st.Dev != dev {
		return 0, fmt.Errorf("remove %s: another file system is mounted there", d.join(name))
	}
	if depth > maxDepth {
		return 0, fmt.Errorf("remove %s: more than %d directories deep", d.join(name), maxDepth)
	}
	sub, err := d.openDir(name)
	if err != nil {
		return 0, err
	}
	var firstErr error
	err = sub.each(func(n string) bool {
		f, err := sub.removeAll(n, dev, depth+1)
		freed += f
		if err != nil && firstErr == nil {
			firstErr = err
		}
		return true
	})
	sub.close()
	if err != nil && firstErr == nil {
		firstErr = err
	}
	if err := d.rmdir(name); err != nil {
		if firstErr == nil {
			firstErr = err
		}
		return freed, firstErr
	}
	return freed + st.Blocks*512, firstErr
}

func isDir(st unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFDIR }

func mtime(st unix.Stat_t) time.Time { return time.Unix(st.Mtim.Sec, st.Mtim.Nsec) }

func ignoringEINTR(fn func() error) error {
	for {
		err := fn()
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// privateMode is the most a directory above the per-container directories
// (the root and the pod directories) may allow: the owner (root)
// everything, its group reading, nobody else anything, as kubelet keeps
// its pod directories. A host user who is neither root nor in the group
// cannot reach what containers write, nor anything they plant there.
const privateMode = 0o750

// secure makes d owned by root and takes away every permission beyond
// privateMode (others' access, group write, set-ID and sticky bits); its
// group stays, so an operator may give a collector's group read access.
// It returns what d had before when it changed something.
func (d *dir) secure() (was unix.Stat_t, changed bool, err error) {
	st, err := d.stat()
	if err != nil {
		return st, false, err
	}
	if st.Uid != 0 {
		if err := unix.Fchown(d.fd, 0, -1); err != nil {
			return st, false, fmt.Errorf("chown %s to root: %w", d.path, err)
		}
		changed = true
	}
	if mode := st.Mode & 0o7777; mode&^privateMode != 0 {
		if err := unix.Fchmod(d.fd, mode&privateMode); err != nil {
			return st, changed, fmt.Errorf("chmod %s: %w", d.path, err)
		}
		changed = true
	}
	return st, changed, nil
}

// chmod sets d's permission bits.
func (d *dir) chmod(mode uint32) error {
	if err := unix.Fchmod(d.fd, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", d.path, err)
	}
	return nil
}

// withFile calls fn with the path of a magic link (/proc/self/fd/N) to the
// regular file name, after checking, on an O_PATH descriptor that opened
// nothing and followed nothing, that name is still the regular file with
// inode ino. A path system call on that link (chmod, truncate) acts on
// that very inode: a name swapped meanwhile for a symlink, a FIFO or a
// device is never followed or opened. fn's error is returned as it is.
func (d *dir) withFile(name string, ino uint64, fn func(proc string) error) error {
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, err = unix.Openat(d.fd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("open %s: %w", d.join(name), err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", d.join(name), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Ino != ino {
		return fmt.Errorf("%s: %w", d.join(name), errReplaced)
	}
	return fn("/proc/self/fd/" + strconv.Itoa(fd))
}

// errReplaced is returned when an entry changed between two looks at it.
var errReplaced = errors.New("replaced while retention looked at it")

// chmodFile sets the permission bits of the regular file name (inode ino).
func (d *dir) chmodFile(name string, ino uint64, mode uint32) error {
	return d.withFile(name, ino, func(proc string) error {
		if err := unix.Chmod(proc, mode); err != nil {
			return fmt.Errorf("chmod %s: %w", d.join(name), err)
		}
		return nil
	})
}

// truncateFile empties the regular file name (inode ino), which frees its
// blocks even while a process holds it open.
func (d *dir) truncateFile(name string, ino uint64) error {
	return d.withFile(name, ino, func(proc string) error {
		if err := unix.Truncate(proc, 0); err != nil {
			return fmt.Errorf("truncate %s: %w", d.join(name), err)
		}
		return nil
	})
}

// setMtime sets the mtime of the entry name, not following a symlink; its
// atime stays.
func (d *dir) setMtime(name string, t time.Time) error {
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(t.UnixNano())}
	if err := unix.UtimesNanoAt(d.fd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set the mtime of %s: %w", d.join(name), err)
	}
	return nil
}
