package filelogs

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
)

// Names of the files Berth keeps next to the log directories. Every name
// Berth uses inside the root starts with ".berth-", and no encoded path or
// Kubernetes name starts with ".", so they cannot clash.
const (
	// MetadataFile is in each container directory: namespace, pod, UID,
	// container, declared paths and pod labels, as JSON.
	MetadataFile = ".berth-filelogs.json"
	// GoneFile is in a pod directory once the pod is gone from the node:
	// the time it went, RFC 3339, on one line. Retention counts from it.
	GoneFile = ".berth-gone"
	// TrashPrefix starts the name of a pod directory being removed.
	TrashPrefix = ".berth-removing-"
)

// PodDirName names a pod's directory under the root:
// <namespace>_<pod>_<uid>, like kubelet's /var/log/pods. Kubernetes names
// have no "_", so the three parts can be read back (ParsePodDirName). A
// name longer than MaxNameLen is cut in the pod part; the UID keeps it
// unique.
func PodDirName(namespace, pod, uid string) string {
	if over := len(namespace) + len(pod) + len(uid) + 2 - MaxNameLen; over > 0 && over < len(pod) {
		pod = pod[:len(pod)-over]
	}
	return namespace + "_" + pod + "_" + uid
}

// ParsePodDirName splits a pod directory name into namespace, pod and UID.
// ok is false for a name PodDirName cannot have made: Berth leaves such
// entries of the root alone.
func ParsePodDirName(name string) (namespace, pod, uid string, ok bool) {
	namespace, rest, ok1 := strings.Cut(name, "_")
	pod, uid, ok2 := strings.Cut(rest, "_")
	if !ok1 || !ok2 || len(name) > MaxNameLen ||
		checkName(namespace) != nil || checkName(pod) != nil || checkUID(uid) != nil {
		return "", "", "", false
	}
	return namespace, pod, uid, true
}

// checkName accepts what Kubernetes allows in namespace, pod and container
// names (lower-case letters, digits, "-" and "."), which keeps a directory
// name free of "/", "_" and leading dots.
func checkName(s string) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > 253:
		return errors.New("is longer than 253 characters")
	case s[0] == '.' || s[0] == '-':
		return errors.New(`starts with "." or "-"`)
	}
	for _, c := range []byte(s) {
		if !isLowerAlnum(c) && c != '-' && c != '.' {
			return fmt.Errorf("has %q: want lower-case letters, digits, \"-\" and \".\"", c)
		}
	}
	return nil
}

// checkUID accepts a pod UID: letters, digits and "-", at most 128.
func checkUID(s string) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > 128:
		return errors.New("is longer than 128 characters")
	case s[0] == '-':
		return errors.New(`starts with "-"`)
	}
	for _, c := range []byte(s) {
		if !isLowerAlnum(c) && (c < 'A' || c > 'Z') && c != '-' {
			return fmt.Errorf("has %q: want letters, digits and \"-\"", c)
		}
	}
	return nil
}

func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// EncodePath turns a clean absolute container path into the name of its
// host directory: the leading "/" is dropped, each other "/" becomes "-",
// and every byte that is not an ASCII letter, digit, "." or "_" becomes
// %XX (upper-case hex), as does a leading ".". So "/app/logs" is
// "app-logs", "/app-logs" is "app%2Dlogs", "/var/log/my app" is
// "var-log-my%20app", and "/.cache" is "%2Ecache". The encoding is
// one-to-one; DecodePath reverses it.
func EncodePath(p string) string {
	p = strings.TrimPrefix(p, "/")
	var b strings.Builder
	b.Grow(len(p))
	for i := range len(p) {
		c := p[i]
		switch {
		case c == '/':
			b.WriteByte('-')
		case c == '.' && i == 0:
			fmt.Fprintf(&b, "%%%02X", c)
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// DecodePath reverses EncodePath. It fails on a name EncodePath cannot
// have made.
func DecodePath(name string) (string, error) {
	if name == "" {
		return "", errors.New("empty name")
	}
	var b strings.Builder
	b.WriteByte('/')
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '-':
			b.WriteByte('/')
		case c == '/':
			return "", fmt.Errorf("name %q: \"/\" at %d", name, i)
		case c == '%':
			if i+2 >= len(name) || unhex(name[i+1]) < 0 || unhex(name[i+2]) < 0 {
				return "", fmt.Errorf("name %q: %% at %d is not followed by two upper-case hex digits", name, i)
			}
			d := byte(unhex(name[i+1])<<4 | unhex(name[i+2]))
			if !needsEscape(d, i == 0) {
				return "", fmt.Errorf("name %q: %s at %d escapes %q, which is never escaped", name, name[i:i+3], i, d)
			}
			b.WriteByte(d)
			i += 2
		case needsEscape(c, i == 0):
			return "", fmt.Errorf("name %q: %q at %d should be escaped", name, c, i)
		default:
			b.WriteByte(c)
		}
	}
	p := b.String()
	if path.Clean(p) != p || slices.Contains(strings.Split(p, "/"), "..") {
		return "", fmt.Errorf("name %q: %q is not a clean absolute path", name, p)
	}
	return p, nil
}

// needsEscape reports whether EncodePath writes c, the first byte of the
// name when first, as %XX. "/" is never escaped (it becomes "-"), so a
// name holding "/" or "%2F" is not one EncodePath made.
func needsEscape(c byte, first bool) bool {
	switch {
	case c == '/':
		return false
	case c == '.':
		return first
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_':
		return false
	}
	return true
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
