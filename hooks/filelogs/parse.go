// Package filelogs is the pure half of Berth's file logs: a container whose
// environment has KUBERNETES_FILELOGS=/app/logs gets a directory of the
// host, under a root such as /logs, bind-mounted read-write at /app/logs.
//
// Parse checks the variable's value, NewPlan lays out the host directories
// of one container and builds the NRI mounts, CheckRunning tells which of
// them a running container lacks, SizeLimit reads the size limit a pod asks
// for (AnnotationSizeLimit). Nothing here does I/O: the agent
// (agent/logdirs) creates the directories, writes the metadata file and
// removes old files. See README.md for the layout and the rules.
package filelogs

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

const (
	// EnvName is the container environment variable that asks for file
	// logs: absolute directories in the container, comma-separated.
	EnvName = "KUBERNETES_FILELOGS"
	// MaxPaths is how many directories one container may ask for.
	MaxPaths = 16
	// MaxNameLen is the longest directory name most Linux file systems
	// take (NAME_MAX); an encoded path longer than that is rejected.
	MaxNameLen = 255
)

// Rule names the rule a bad value breaks, for callers that branch on it.
type Rule string

// The rules Parse and NewPlan enforce.
const (
	RuleEmpty     Rule = "empty"     // an empty element, e.g. "/a,,/b" or a trailing comma
	RuleInvalid   Rule = "invalid"   // not UTF-8, or a control character
	RuleRelative  Rule = "relative"  // not starting with "/"
	RuleDotDot    Rule = "dotdot"    // a ".." element
	RuleRoot      Rule = "root"      // "/" itself
	RuleSystem    Rule = "system"    // /proc, /sys, /dev or below
	RuleTooLong   Rule = "toolong"   // encoded name over MaxNameLen bytes
	RuleTooMany   Rule = "toomany"   // more than MaxPaths paths
	RuleDuplicate Rule = "duplicate" // the same directory twice
	RuleNested    Rule = "nested"    // one path inside another
	RuleCollision Rule = "collision" // clashes with a mount the container already has
)

// Error is a bad KUBERNETES_FILELOGS value. Its text names the variable,
// the value and the rule broken, e.g.
//
//	KUBERNETES_FILELOGS="logs": path "logs" is relative: want an absolute path (starting with "/")
type Error struct {
	// Value is the variable's whole value.
	Value string
	// Rule is the rule broken.
	Rule Rule
	// Reason says what is wrong and what to do.
	Reason string
}

func (e *Error) Error() string { return fmt.Sprintf("%s=%q: %s", EnvName, e.Value, e.Reason) }

func newError(value string, rule Rule, format string, args ...any) *Error {
	return &Error{Value: value, Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// systemDirs belong to the runtime: a bind mount over them would break
// the container or hide the kernel's interfaces.
var systemDirs = []string{"/proc", "/sys", "/dev"}

// Lookup returns the value of KUBERNETES_FILELOGS in env ("KEY=value"
// entries, as in an OCI spec) and whether it is set. When the key is
// repeated the last entry wins, as containerd's own merging of image and
// pod environment does.
func Lookup(env []string) (string, bool) {
	for _, kv := range slices.Backward(env) {
		if v, ok := strings.CutPrefix(kv, EnvName+"="); ok {
			return v, true
		}
	}
	return "", false
}

// Parse checks a KUBERNETES_FILELOGS value and returns its directories,
// cleaned (path.Clean) and in the order given. Elements are separated by
// commas; spaces around an element are ignored. An empty or blank value
// asks for nothing: Parse returns no paths and no error. Any other broken
// rule is an *Error.
func Parse(value string) ([]string, error) {
	if strings.TrimSpace(value) == "" {
		return nil, nil
	}
	if !utf8.ValidString(value) {
		return nil, newError(value, RuleInvalid, "the value is not valid UTF-8")
	}
	elems := strings.Split(value, ",")
	if len(elems) > MaxPaths {
		return nil, newError(value, RuleTooMany, "%d paths: want at most %d", len(elems), MaxPaths)
	}
	paths := make([]string, 0, len(elems))
	for i, el := range elems {
		p := strings.TrimSpace(el)
		clean, err := checkPath(value, i, p)
		if err != nil {
			return nil, err
		}
		if slices.Contains(paths, clean) {
			return nil, newError(value, RuleDuplicate, "path %q is given twice", p)
		}
		paths = append(paths, clean)
	}
	for _, a := range paths {
		for _, b := range paths {
			if a != b && isUnder(b, a) {
				return nil, newError(value, RuleNested, "path %q is inside %q: want separate directories", b, a)
			}
		}
	}
	return paths, nil
}

// checkPath checks element i (0-based) of value, p, and returns it cleaned.
func checkPath(value string, i int, p string) (string, error) {
	if p == "" {
		return "", newError(value, RuleEmpty, "path %d is empty: want absolute paths separated by commas", i+1)
	}
	if strings.ContainsFunc(p, unicode.IsControl) {
		return "", newError(value, RuleInvalid, "path %q has a control character", p)
	}
	if !strings.HasPrefix(p, "/") {
		return "", newError(value, RuleRelative, "path %q is relative: want an absolute path (starting with \"/\")", p)
	}
	if slices.Contains(strings.Split(p, "/"), "..") {
		return "", newError(value, RuleDotDot, "path %q contains \"..\": want a path without \"..\"", p)
	}
	clean := path.Clean(p)
	if clean == "/" {
		return "", newError(value, RuleRoot, "path %q is the container's root: want a directory below \"/\"", p)
	}
	for _, sys := range systemDirs {
		if isUnder(clean, sys) {
			return "", newError(value, RuleSystem, "path %q is under %s: /proc, /sys and /dev belong to the runtime", p, sys)
		}
	}
	if n := len(EncodePath(clean)); n > MaxNameLen {
		return "", newError(value, RuleTooLong, "path %q is too long: its host directory name would be %d bytes, over %d",
			p, n, MaxNameLen)
	}
	return clean, nil
}

// isUnder reports whether the clean absolute path p is dir or below it.
func isUnder(p, dir string) bool {
	if dir == "/" {
		return true
	}
	return p == dir || strings.HasPrefix(p, dir+"/")
}
