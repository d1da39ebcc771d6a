// Package docs checks the documentation against the code.
package docs

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// metricRef is a metric name in the docs: the prefixes Berth's metrics
// use (berth_filelogs alone is a Fluent Bit parser's name, and a name
// ending in "_" a family).
var metricRef = regexp.MustCompile(`\bberth_(agent|controller|build)_[a-z0-9_]*[a-z0-9]\b`)

// metricScheme is the one naming scheme of every process's metrics:
// berth_<process>_<part>_<name> (berth_agent_ipam_..., berth_controller_ippool_...),
// and berth_build_info, which every process exports.
var metricScheme = regexp.MustCompile(`^berth_((agent|controller)_[a-z0-9]+_[a-z0-9_]+|build_info)$`)

// metricName is a metric name as the code defines it: a whole string
// literal.
var metricName = regexp.MustCompile(`"(berth_[a-z0-9_]+)"`)

// TestDocs_metricsExist: every metric a README or docs/ page names is
// defined in the code (a histogram's _bucket, _count and _sum series
// included), so a renamed or removed metric cannot stay documented.
func TestDocs_metricsExist(t *testing.T) {
	root := filepath.Join("..", "..")
	defined := map[string]bool{}
	var docs []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "_output" || n == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		switch {
		case strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go"):
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range metricName.FindAllStringSubmatch(string(b), -1) {
				defined[m[1]] = true
			}
		case strings.HasSuffix(path, ".md"):
			docs = append(docs, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(defined) < 10 || len(docs) < 5 {
		t.Fatalf("found %d metric names in the code and %d Markdown files: walking the wrong tree?", len(defined), len(docs))
	}
	for name := range defined {
		if !metricScheme.MatchString(name) {
			t.Errorf("metric %s does not follow berth_<process>_<part>_<name> (process: agent or controller)", name)
		}
	}
	checked := 0
	for _, path := range docs {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var missing []string
		for _, ref := range metricRef.FindAllString(string(b), -1) {
			checked++
			base := ref
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				if b, ok := strings.CutSuffix(ref, suffix); ok && defined[b] {
					base = b
				}
			}
			if !defined[base] && !slices.Contains(missing, ref) {
				missing = append(missing, ref)
			}
		}
		if len(missing) > 0 {
			t.Errorf("%s names metrics the code does not define: %s", path, strings.Join(missing, ", "))
		}
	}
	t.Logf("%d metric references in %d Markdown files, %d metric names in the code", checked, len(docs), len(defined))
}
