// Package procstat reads /proc/<pid>/stat for tests and benchmarks.
package procstat

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Fields returns the fields of /proc/<pid>/stat after the command name,
// which may hold spaces and parentheses: [0] is the state (field 3 in
// proc(5)), [1] the parent's pid, [11] and [12] utime and stime in clock
// ticks.
func Fields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name in %q", pid, b)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// CPU returns the user+system CPU time pid has used so far (0 if it cannot
// be read): utime and stime, in clock ticks of 1/100 s on Linux.
func CPU(pid int) time.Duration {
	f, err := Fields(pid)
	if err != nil || len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}

// Children returns the pids of this process's children by command name
// (/proc/<pid>/comm), e.g. the kube-apiserver and etcd envtest started.
func Children() map[string]int {
	out := map[string]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := Fields(pid)
		if err != nil || len(f) < 2 || f[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil {
			out[strings.TrimSpace(string(comm))] = pid
		}
	}
	return out
}

// Pin restricts every thread of pid to cpus (sched_setaffinity of each
// /proc/<pid>/task entry: the affinity is per thread, and a process's
// threads keep theirs when only its main thread is set). Threads and
// processes it starts later inherit it.
func Pin(pid int, cpus ...int) error {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return fmt.Errorf("pin %d: %w", pid, err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("pin %d thread %d to CPUs %v: %w", pid, tid, cpus, err)
		}
	}
	return nil
}
