package ipalloc_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/berth-io/berth/internal/ipalloc"
)

const (
	dns1123Label = `a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`
	dns1123Sub   = `a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`
)

func TestParseRetain(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     bool
		err      string
	}{
		{name: "true", in: "true", want: true},
		{name: "false", in: "false", want: false},
		{name: "typo", in: "flase", err: `malformed annotation: berth.io/ip-retain: "flase": want "true" or "false"`},
		{name: "other spelling ParseBool takes", in: "True", err: `malformed annotation: berth.io/ip-retain: "True": want "true" or "false"`},
		{name: "number", in: "0", err: `malformed annotation: berth.io/ip-retain: "0": want "true" or "false"`},
		{name: "empty", in: "", err: `malformed annotation: berth.io/ip-retain: "": want "true" or "false"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ipalloc.ParseRetain(tc.in)
			checkParse(t, got, tc.want, err, tc.err)
		})
	}
}

func TestParseGroup(t *testing.T) {
	for _, tc := range []struct {
		name, in, want, err string
	}{
		{name: "label", in: "db-shards", want: "db-shards"},
		{name: "upper case and underscore", in: "Bad_Group", err: `malformed annotation: berth.io/ip-group: "Bad_Group": ` + dns1123Label},
		{name: "empty", in: "", err: `malformed annotation: berth.io/ip-group: "": ` + dns1123Label},
		{name: "dot", in: "a.b", err: `malformed annotation: berth.io/ip-group: "a.b": must not contain dots`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ipalloc.ParseGroup(tc.in)
			checkParse(t, got, tc.want, err, tc.err)
		})
	}
}

func TestParsePools(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
		err      string
	}{
		{name: "one", in: "pods", want: []string{"pods"}},
		{name: "two with spaces", in: "pods, pods6", want: []string{"pods", "pods6"}},
		{name: "empty name", in: "p,,q", err: `"p,,q": pool name "": ` + dns1123Sub},
		{name: "empty", in: "", err: `"": pool name "": ` + dns1123Sub},
		{name: "three", in: "a,b,c", err: `"a,b,c": at most two pools (one IPv4, one IPv6)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ipalloc.ParsePools(tc.in)
			if tc.err == "" && (err != nil || !slices.Equal(got, tc.want)) {
				t.Fatalf("ParsePools(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
			if tc.err != "" && (err == nil || err.Error() != tc.err) {
				t.Fatalf("ParsePools(%q) error = %v\nwant %s", tc.in, err, tc.err)
			}
		})
	}
}

func TestParseRelease(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     bool
		err      string
	}{
		{name: "early", in: "early", want: true},
		{name: "typo", in: "erly", err: `malformed annotation: berth.io/ip-release: "erly": want "early", or no annotation to release the addresses at the pod's CNI DEL`},
		{name: "upper case", in: "Early", err: `malformed annotation: berth.io/ip-release: "Early": want "early", or no annotation to release the addresses at the pod's CNI DEL`},
		{name: "empty", in: "", err: `malformed annotation: berth.io/ip-release: "": want "early", or no annotation to release the addresses at the pod's CNI DEL`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ipalloc.ParseRelease(tc.in)
			checkParse(t, got, tc.want, err, tc.err)
		})
	}
}

// checkParse checks a parser's result: want and no error, or exactly
// wantErr (wrapping ipalloc.ErrBadAnnotation).
func checkParse[T comparable](t *testing.T, got, want T, err error, wantErr string) {
	t.Helper()
	if wantErr == "" {
		if err != nil || got != want {
			t.Fatalf("got %v, %v; want %v", got, err, want)
		}
		return
	}
	if err == nil || err.Error() != wantErr {
		t.Fatalf("error = %v\nwant %s", err, wantErr)
	}
	if !errors.Is(err, ipalloc.ErrBadAnnotation) {
		t.Fatalf("error %v does not wrap ErrBadAnnotation", err)
	}
}
