package filelogs

import (
	"errors"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
)

func TestSizeLimit(t *testing.T) {
	const max = 10 << 30 // 10Gi
	tests := []struct {
		name    string
		ann     map[string]string
		want    int64
		wantSet bool
		wantErr string
	}{
		{name: "no annotations"},
		{name: "other annotations", ann: map[string]string{"berth.io/ip-retain": "false"}},
		{name: "binary suffix", ann: map[string]string{AnnotationSizeLimit: "500Mi"}, want: 500 << 20, wantSet: true},
		{name: "decimal suffix", ann: map[string]string{AnnotationSizeLimit: "2G"}, want: 2e9, wantSet: true},
		{name: "plain bytes", ann: map[string]string{AnnotationSizeLimit: "1048576"}, want: 1 << 20, wantSet: true},
		{name: "fraction of a whole", ann: map[string]string{AnnotationSizeLimit: "1.5Gi"}, want: 3 << 29, wantSet: true},
		{name: "exactly the maximum", ann: map[string]string{AnnotationSizeLimit: "10Gi"}, want: max, wantSet: true},
		{name: "unit typo", ann: map[string]string{AnnotationSizeLimit: "10GB"},
			wantErr: `annotation berth.io/filelogs-size-limit="10GB": not a Kubernetes quantity: want bytes with an optional suffix, e.g. "500Mi" or "2Gi"`},
		{name: "spaces", ann: map[string]string{AnnotationSizeLimit: " 1Gi"},
			wantErr: `annotation berth.io/filelogs-size-limit=" 1Gi": not a Kubernetes quantity: want bytes with an optional suffix, e.g. "500Mi" or "2Gi"`},
		{name: "empty", ann: map[string]string{AnnotationSizeLimit: ""},
			wantErr: `annotation berth.io/filelogs-size-limit="": not a Kubernetes quantity: want bytes with an optional suffix, e.g. "500Mi" or "2Gi"`},
		{name: "zero", ann: map[string]string{AnnotationSizeLimit: "0"},
			wantErr: `annotation berth.io/filelogs-size-limit="0": want a size above 0, at most 10Gi`},
		{name: "negative", ann: map[string]string{AnnotationSizeLimit: "-1Gi"},
			wantErr: `annotation berth.io/filelogs-size-limit="-1Gi": want a size above 0, at most 10Gi`},
		{name: "above the maximum", ann: map[string]string{AnnotationSizeLimit: "11Gi"},
			wantErr: `annotation berth.io/filelogs-size-limit="11Gi": above this node's maximum of 10Gi (berth-agent --filelogs-max-size-limit): want at most 10Gi`},
		{name: "beyond int64", ann: map[string]string{AnnotationSizeLimit: "9223372036854775808"},
			wantErr: `annotation berth.io/filelogs-size-limit="9223372036854775808": above this node's maximum of 10Gi (berth-agent --filelogs-max-size-limit): want at most 10Gi`},
		{name: "milli", ann: map[string]string{AnnotationSizeLimit: "100m"},
			wantErr: `annotation berth.io/filelogs-size-limit="100m": not a whole number of bytes: want e.g. "1"`},
		{name: "fraction of a byte", ann: map[string]string{AnnotationSizeLimit: "1.1"},
			wantErr: `annotation berth.io/filelogs-size-limit="1.1": not a whole number of bytes: want e.g. "2"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, set, err := SizeLimit(tt.ann, max)
			if errString(err) != tt.wantErr {
				t.Fatalf("err = %q\nwant %q", errString(err), tt.wantErr)
			}
			if got != tt.want || set != tt.wantSet {
				t.Errorf("SizeLimit = %d, %v, want %d, %v", got, set, tt.want, tt.wantSet)
			}
		})
	}
}

func FuzzParseSizeLimit(f *testing.F) {
	for _, s := range []string{"500Mi", "2G", "1.5Gi", "0", "-1", "100m", "1e3", "10GB", "", "9223372036854775808",
		"8Ei", ".5Ki", "+1Ki", "1e-3"} {
		f.Add(s, int64(10<<30))
	}
	f.Fuzz(func(t *testing.T, value string, max int64) {
		if max <= 0 {
			return // the agent validates its maximum
		}
		n, err := ParseSizeLimit(value, max)
		if err != nil {
			var ae *AnnotationError
			if !errors.As(err, &ae) || ae.Value != value || ae.Annotation != AnnotationSizeLimit ||
				!strings.HasPrefix(err.Error(), "annotation "+AnnotationSizeLimit+"=") {
				t.Fatalf("ParseSizeLimit(%q) err = %v, want an *AnnotationError naming the annotation and value", value, err)
			}
			return
		}
		if n <= 0 || n > max {
			t.Fatalf("ParseSizeLimit(%q, %d) = %d: out of (0, max]", value, max, n)
		}
		// What it accepts is a quantity of exactly n bytes.
		q := resource.MustParse(value)
		if q.Cmp(*resource.NewQuantity(n, resource.BinarySI)) != 0 {
			t.Fatalf("ParseSizeLimit(%q) = %d, but the quantity is %s", value, n, q.String())
		}
	})
}
