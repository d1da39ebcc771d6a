// Package procstat reads /proc/<pid>/stat for tests and benchmarks.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"strings"
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
