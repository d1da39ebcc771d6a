package filelogs

import (
	"errors"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		value    string
		want     []string
		wantErr  string
		wantRule Rule
	}{
		{name: "empty value asks for nothing", value: ""},
		{name: "blank value asks for nothing", value: "  "},
		{name: "one path", value: "/app/logs", want: []string{"/app/logs"}},
		{name: "two paths in order", value: "/app/logs,/app/audit", want: []string{"/app/logs", "/app/audit"}},
		{name: "spaces around elements", value: " /app/logs , /app/audit ", want: []string{"/app/logs", "/app/audit"}},
		{name: "cleaned", value: "/app//logs/,/var/./log", want: []string{"/app/logs", "/var/log"}},
		{name: "siblings with a common prefix", value: "/app/log,/app/logs", want: []string{"/app/log", "/app/logs"}},
		{name: "unicode", value: "/app/журнал", want: []string{"/app/журнал"}},
		{name: "16 paths", value: sixteen(), want: sixteenWant()},
		{
			name: "relative", value: "logs", wantRule: RuleRelative,
			wantErr: `KUBERNETES_FILELOGS="logs": path "logs" is relative: want an absolute path (starting with "/")`,
		},
		{
			name: "relative second", value: "/app/logs,./audit", wantRule: RuleRelative,
			wantErr: `KUBERNETES_FILELOGS="/app/logs,./audit": path "./audit" is relative: want an absolute path (starting with "/")`,
		},
		{
			name: "dot dot", value: "/app/../etc", wantRule: RuleDotDot,
			wantErr: `KUBERNETES_FILELOGS="/app/../etc": path "/app/../etc" contains "..": want a path without ".."`,
		},
		{
			name: "trailing dot dot", value: "/app/logs/..", wantRule: RuleDotDot,
			wantErr: `KUBERNETES_FILELOGS="/app/logs/..": path "/app/logs/.." contains "..": want a path without ".."`,
		},
		{name: "dots in a name are fine", value: "/app/..logs", want: []string{"/app/..logs"}},
		{
			name: "root", value: "/", wantRule: RuleRoot,
			wantErr: `KUBERNETES_FILELOGS="/": path "/" is the container's root: want a directory below "/"`,
		},
		{
			name: "root spelled differently", value: "//./", wantRule: RuleRoot,
			wantErr: `KUBERNETES_FILELOGS="//./": path "//./" is the container's root: want a directory below "/"`,
		},
		{
			name: "proc", value: "/proc", wantRule: RuleSystem,
			wantErr: `KUBERNETES_FILELOGS="/proc": path "/proc" is under /proc: /proc, /sys and /dev belong to the runtime`,
		},
		{
			name: "under sys", value: "/app/logs,/sys/fs/cgroup", wantRule: RuleSystem,
			wantErr: `KUBERNETES_FILELOGS="/app/logs,/sys/fs/cgroup": path "/sys/fs/cgroup" is under /sys: /proc, /sys and /dev belong to the runtime`,
		},
		{
			name: "under dev", value: "/dev/shm/logs", wantRule: RuleSystem,
			wantErr: `KUBERNETES_FILELOGS="/dev/shm/logs": path "/dev/shm/logs" is under /dev: /proc, /sys and /dev belong to the runtime`,
		},
		{name: "a sibling of dev", value: "/devices", want: []string{"/devices"}},
		{
			name: "too many", value: sixteen() + ",/q", wantRule: RuleTooMany,
			wantErr: `KUBERNETES_FILELOGS="` + sixteen() + `,/q": 17 paths: want at most 16`,
		},
		{
			name: "duplicate", value: "/app/logs,/app/logs/", wantRule: RuleDuplicate,
			wantErr: `KUBERNETES_FILELOGS="/app/logs,/app/logs/": path "/app/logs/" is given twice`,
		},
		{
			name: "nested", value: "/app/logs/audit,/app/logs", wantRule: RuleNested,
			wantErr: `KUBERNETES_FILELOGS="/app/logs/audit,/app/logs": path "/app/logs/audit" is inside "/app/logs": want separate directories`,
		},
		{
			name: "empty element", value: "/app/logs,,/app/audit", wantRule: RuleEmpty,
			wantErr: `KUBERNETES_FILELOGS="/app/logs,,/app/audit": path 2 is empty: want absolute paths separated by commas`,
		},
		{
			name: "trailing comma", value: "/app/logs,", wantRule: RuleEmpty,
			wantErr: `KUBERNETES_FILELOGS="/app/logs,": path 2 is empty: want absolute paths separated by commas`,
		},
		{
			name: "semicolon is not a separator", value: "/app/logs;/app/audit",
			want: []string{"/app/logs;/app/audit"},
		},
		{
			name: "a trailing newline is space", value: "/app/logs\n", want: []string{"/app/logs"},
		},
		{
			name: "control character inside", value: "/app/lo\x00gs", wantRule: RuleInvalid,
			wantErr: `KUBERNETES_FILELOGS="/app/lo\x00gs": path "/app/lo\x00gs" has a control character`,
		},
		{
			name: "not UTF-8", value: "/app/\xff", wantRule: RuleInvalid,
			wantErr: `KUBERNETES_FILELOGS="/app/\xff": the value is not valid UTF-8`,
		},
		{
			name: "too long", value: "/" + strings.Repeat("a", 256), wantRule: RuleTooLong,
			wantErr: `KUBERNETES_FILELOGS="/` + strings.Repeat("a", 256) + `": path "/` + strings.Repeat("a", 256) +
				`" is too long: its host directory name would be 256 bytes, over 255`,
		},
		{name: "255 bytes is fine", value: "/" + strings.Repeat("a", 255), want: []string{"/" + strings.Repeat("a", 255)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.value)
			if gotErr := errString(err); gotErr != tt.wantErr {
				t.Fatalf("Parse(%q) err = %q\nwant %q", tt.value, gotErr, tt.wantErr)
			}
			if err != nil {
				var fe *Error
				if !errors.As(err, &fe) || fe.Rule != tt.wantRule || fe.Value != tt.value {
					t.Errorf("err = %#v, want an *Error with rule %q and the value", err, tt.wantRule)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Parse(%q) = %q, want %q", tt.value, got, tt.want)
			}
		})
	}
}

func sixteen() string {
	return strings.Join(sixteenWant(), ",")
}

func sixteenWant() []string {
	var s []string
	for c := 'a'; c < 'a'+16; c++ {
		s = append(s, "/"+string(c))
	}
	return s
}

func TestLookup(t *testing.T) {
	tests := []struct {
		name   string
		env    []string
		want   string
		wantOK bool
	}{
		{name: "unset", env: []string{"PATH=/bin", "KUBERNETES_FILELOGSX=/a"}},
		{name: "set", env: []string{"PATH=/bin", "KUBERNETES_FILELOGS=/app/logs"}, want: "/app/logs", wantOK: true},
		{name: "set empty", env: []string{"KUBERNETES_FILELOGS="}, want: "", wantOK: true},
		{name: "the last wins", env: []string{"KUBERNETES_FILELOGS=/image", "KUBERNETES_FILELOGS=/pod"}, want: "/pod", wantOK: true},
		{name: "a value with =", env: []string{"KUBERNETES_FILELOGS=/a=b"}, want: "/a=b", wantOK: true},
		{name: "no =", env: []string{"KUBERNETES_FILELOGS"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Lookup(tt.env)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("Lookup(%q) = %q, %v; want %q, %v", tt.env, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestEncodePath(t *testing.T) {
	tests := []struct{ path, want string }{
		{"/app/logs", "app-logs"},
		{"/app-logs", "app%2Dlogs"},
		{"/a-/b", "a%2D-b"},
		{"/a/-b", "a-%2Db"},
		{"/var/log/my app", "var-log-my%20app"},
		{"/.cache", "%2Ecache"},
		{"/a/.cache", "a-.cache"},
		{"/a/b_c.log", "a-b_c.log"},
		{"/100%", "100%25"},
		{"/é", "%C3%A9"},
		{"/A/Z", "A-Z"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got := EncodePath(tt.path)
			if got != tt.want {
				t.Fatalf("EncodePath(%q) = %q, want %q", tt.path, got, tt.want)
			}
			back, err := DecodePath(got)
			if err != nil || back != tt.path {
				t.Errorf("DecodePath(%q) = %q, %v; want %q", got, back, err, tt.path)
			}
		})
	}
}

func TestDecodePath(t *testing.T) {
	tests := []struct{ name, wantErr string }{
		{"", "empty name"},
		{"a%2", `name "a%2": % at 1 is not followed by two upper-case hex digits`},
		{"a%2d", `name "a%2d": % at 1 is not followed by two upper-case hex digits`},
		{"%61", `name "%61": %61 at 0 escapes 'a', which is never escaped`},
		{"a%2F", `name "a%2F": %2F at 1 escapes '/', which is never escaped`},
		{"a/b", `name "a/b": "/" at 1`},
		{".a", `name ".a": '.' at 0 should be escaped`},
		{"a b", `name "a b": ' ' at 1 should be escaped`},
		{"a--b", `name "a--b": "/a//b" is not a clean absolute path`},
		{"a-", `name "a-": "/a/" is not a clean absolute path`},
		{"a-..", `name "a-..": "/a/.." is not a clean absolute path`},
		{"a-%2E.", `name "a-%2E.": %2E at 2 escapes '.', which is never escaped`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodePath(tt.name)
			if errString(err) != tt.wantErr {
				t.Errorf("DecodePath(%q) = %q, %v; want error %q", tt.name, got, err, tt.wantErr)
			}
		})
	}
}

func TestPodDirName(t *testing.T) {
	long := strings.Repeat("p", 253)
	tests := []struct {
		name, ns, pod, uid, want string
	}{
		{name: "plain", ns: "shop", pod: "web-7d9f-abcde", uid: "0b6c3c4e-1f2a-4b5c-9d8e-7f6a5b4c3d2e",
			want: "shop_web-7d9f-abcde_0b6c3c4e-1f2a-4b5c-9d8e-7f6a5b4c3d2e"},
		{name: "long pod name is cut", ns: "ns", pod: long, uid: "u1",
			want: "ns_" + long[:255-len("ns__u1")] + "_u1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := PodDirName(tt.ns, tt.pod, tt.uid)
			if got != tt.want {
				t.Fatalf("PodDirName = %q, want %q", got, tt.want)
			}
			if len(got) > MaxNameLen {
				t.Errorf("len = %d, over %d", len(got), MaxNameLen)
			}
			ns, _, uid, ok := ParsePodDirName(got)
			if !ok || ns != tt.ns || uid != tt.uid {
				t.Errorf("ParsePodDirName(%q) = %q, %q, %v", got, ns, uid, ok)
			}
		})
	}
}

func TestParsePodDirName(t *testing.T) {
	tests := []struct {
		dirName      string
		ns, pod, uid string
		wantOK       bool
	}{
		{dirName: "shop_web-0_0b6c3c4e-1f2a", ns: "shop", pod: "web-0", uid: "0b6c3c4e-1f2a", wantOK: true},
		{dirName: "shop_web.example_u", ns: "shop", pod: "web.example", uid: "u", wantOK: true},
		{dirName: "app"},
		{dirName: ".berth-removing-u"},
		{dirName: "a_b"},
		{dirName: "a_b_c_d"},
		{dirName: "A_b_c"},
		{dirName: "a__c"},
		{dirName: "a_b_"},
		{dirName: "a_.b_c"},
		{dirName: "a_b_c.d"},
	}
	for _, tt := range tests {
		t.Run(tt.dirName, func(t *testing.T) {
			ns, pod, uid, ok := ParsePodDirName(tt.dirName)
			if ok != tt.wantOK || ns != tt.ns || pod != tt.pod || uid != tt.uid {
				t.Errorf("ParsePodDirName(%q) = %q, %q, %q, %v; want %q, %q, %q, %v",
					tt.dirName, ns, pod, uid, ok, tt.ns, tt.pod, tt.uid, tt.wantOK)
			}
		})
	}
}

// runtimeMounts are what containerd and kubelet give a pod's container.
func runtimeMounts() []*api.Mount {
	return []*api.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs"},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/kubelet/pods/u/etc-hosts", Options: []string{"rbind", "rprivate", "rw"}},
		{Destination: "/dev/termination-log", Type: "bind", Source: "/var/lib/kubelet/pods/u/containers/app/x"},
		{Destination: "/var/run/secrets/kubernetes.io/serviceaccount", Type: "bind",
			Source: "/var/lib/kubelet/pods/u/volumes/token", Options: []string{"rbind", "rprivate", "ro"}},
		{Destination: "/app/config", Type: "bind", Source: "/var/lib/kubelet/pods/u/volumes/cm", Options: []string{"rbind", "ro"}},
		{Destination: "/data", Type: "bind", Source: "/var/lib/kubelet/pods/u/volumes/data", Options: []string{"rbind", "rw"}},
	}
}

func testPod() *api.PodSandbox {
	return &api.PodSandbox{
		Id: "sandbox1", Name: "web-0", Namespace: "shop", Uid: "0b6c3c4e-1f2a",
		Labels: map[string]string{
			"app": "web", "io.kubernetes.pod.name": "web-0", "io.kubernetes.pod.namespace": "shop",
			"io.kubernetes.pod.uid": "0b6c3c4e-1f2a",
		},
	}
}

func testContainer(env ...string) *api.Container {
	return &api.Container{Id: "ctr1", PodSandboxId: "sandbox1", Name: "app", Env: append([]string{"PATH=/bin"}, env...),
		Mounts: runtimeMounts()}
}

func TestNewPlan(t *testing.T) {
	tests := []struct {
		name       string
		pod        *api.PodSandbox
		ctr        *api.Container
		wantMounts []string // destination=source
		wantErr    string
	}{
		{name: "no variable", ctr: testContainer()},
		{name: "empty variable", ctr: testContainer("KUBERNETES_FILELOGS=")},
		{
			name: "two paths", ctr: testContainer("KUBERNETES_FILELOGS=/app/logs,/app/audit"),
			wantMounts: []string{
				"/app/logs=/logs/shop_web-0_0b6c3c4e-1f2a/app/app-logs",
				"/app/audit=/logs/shop_web-0_0b6c3c4e-1f2a/app/app-audit",
			},
		},
		{
			name: "inside a read-write volume", ctr: testContainer("KUBERNETES_FILELOGS=/data/logs"),
			wantMounts: []string{"/data/logs=/logs/shop_web-0_0b6c3c4e-1f2a/app/data-logs"},
		},
		{
			name: "bad value", ctr: testContainer("KUBERNETES_FILELOGS=logs"),
			wantErr: `KUBERNETES_FILELOGS="logs": path "logs" is relative: want an absolute path (starting with "/")`,
		},
		{
			name: "same as a mount", ctr: testContainer("KUBERNETES_FILELOGS=/app/logs,/data/"),
			wantErr: `KUBERNETES_FILELOGS="/app/logs,/data/": path "/data" collides with the container's mount at "/data"`,
		},
		{
			name: "would hide a mount", ctr: testContainer("KUBERNETES_FILELOGS=/etc"),
			wantErr: `KUBERNETES_FILELOGS="/etc": path "/etc" would hide the container's mount at "/etc/hosts"`,
		},
		{
			name: "would hide the service account token", ctr: testContainer("KUBERNETES_FILELOGS=/var/run"),
			wantErr: `KUBERNETES_FILELOGS="/var/run": path "/var/run" would hide the container's mount at "/var/run/secrets/kubernetes.io/serviceaccount"`,
		},
		{
			name: "inside a read-only mount", ctr: testContainer("KUBERNETES_FILELOGS=/app/config/logs"),
			wantErr: `KUBERNETES_FILELOGS="/app/config/logs": path "/app/config/logs" is inside the read-only mount at "/app/config"`,
		},
		{
			name: "pod name kubelet would not make", pod: &api.PodSandbox{Name: "web_0", Namespace: "shop", Uid: "u"},
			ctr:     testContainer("KUBERNETES_FILELOGS=/app/logs"),
			wantErr: `file logs: pod name "web_0" has '_': want lower-case letters, digits, "-" and "."`,
		},
		{
			name: "no UID", pod: &api.PodSandbox{Name: "web-0", Namespace: "shop"},
			ctr:     testContainer("KUBERNETES_FILELOGS=/app/logs"),
			wantErr: `file logs: pod UID "" is empty`,
		},
		{
			name: "container name with a slash", ctr: &api.Container{Name: "../x", Env: []string{"KUBERNETES_FILELOGS=/l"}},
			wantErr: `file logs: container name "../x" starts with "." or "-"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := tt.pod
			if pod == nil {
				pod = testPod()
			}
			p, err := NewPlan("/logs", pod, tt.ctr)
			if errString(err) != tt.wantErr {
				t.Fatalf("NewPlan err = %q\nwant %q", errString(err), tt.wantErr)
			}
			var got []string
			if p != nil {
				for _, m := range p.Adjustment().GetMounts() {
					if m.Type != "bind" || !slices.Equal(m.Options, MountOptions) {
						t.Errorf("mount %v: want type bind, options %q", m, MountOptions)
					}
					got = append(got, m.Destination+"="+m.Source)
				}
			}
			if !slices.Equal(got, tt.wantMounts) {
				t.Errorf("mounts = %q, want %q", got, tt.wantMounts)
			}
		})
	}
}

func TestPlan_MetadataJSON(t *testing.T) {
	p, err := NewPlan("/logs", testPod(), testContainer("KUBERNETES_FILELOGS=/app/logs, /app-audit"))
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "namespace": "shop",
  "pod": "web-0",
  "uid": "0b6c3c4e-1f2a",
  "container": "app",
  "paths": [
    {
      "path": "/app/logs",
      "dir": "app-logs"
    },
    {
      "path": "/app-audit",
      "dir": "app%2Daudit"
    }
  ],
  "labels": {
    "app": "web"
  }
}
`
	if got := string(p.MetadataJSON()); got != want {
		t.Errorf("MetadataJSON =\n%s\nwant\n%s", got, want)
	}
	// The pod's labels are copied, not shared.
	if pod := testPod(); pod.Labels["io.kubernetes.pod.uid"] == "" {
		t.Error("testPod lost its labels")
	}
	if p.Metadata.Labels["io.kubernetes.pod.name"] != "" {
		t.Error("kubelet's labels are in the metadata")
	}
}

func TestCheckRunning(t *testing.T) {
	withMount := func(env string, mounts ...*api.Mount) *api.Container {
		c := testContainer(env)
		c.Mounts = append(c.Mounts, mounts...)
		return c
	}
	logsMount := &api.Mount{Destination: "/app/logs", Type: "bind", Source: "/logs/shop_web-0_0b6c3c4e-1f2a/app/app-logs"}
	tests := []struct {
		name        string
		ctr         *api.Container
		wantMissing []string
		wantErr     string
	}{
		{name: "no file logs", ctr: testContainer()},
		{name: "mounted", ctr: withMount("KUBERNETES_FILELOGS=/app/logs", logsMount)},
		{name: "not mounted", ctr: testContainer("KUBERNETES_FILELOGS=/app/logs,/app/audit"),
			wantMissing: []string{"/app/logs", "/app/audit"}},
		{name: "one of two mounted", ctr: withMount("KUBERNETES_FILELOGS=/app/logs,/app/audit", logsMount),
			wantMissing: []string{"/app/audit"}},
		{name: "mounted from elsewhere", ctr: withMount("KUBERNETES_FILELOGS=/app/logs",
			&api.Mount{Destination: "/app/logs", Source: "/var/lib/kubelet/pods/u/volumes/x"}),
			wantMissing: []string{"/app/logs"}},
		{name: "bad value", ctr: testContainer("KUBERNETES_FILELOGS=/"),
			wantErr: `KUBERNETES_FILELOGS="/": path "/" is the container's root: want a directory below "/"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			missing, err := CheckRunning("/logs", testPod(), tt.ctr)
			if errString(err) != tt.wantErr {
				t.Fatalf("err = %q, want %q", errString(err), tt.wantErr)
			}
			var got []string
			for _, d := range missing {
				got = append(got, d.Path)
			}
			if !slices.Equal(got, tt.wantMissing) {
				t.Errorf("missing = %q, want %q", got, tt.wantMissing)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "/app/logs", "/a,/b", "logs", "/a/../b", "/", "/proc/x", " /a , /b/ ", "/a,,/b",
		"/a,/a/b", "/é", "/a%2D", sixteen() + ",/q"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		paths, err := Parse(value)
		if err != nil {
			var fe *Error
			if !errors.As(err, &fe) || fe.Value != value || !strings.HasPrefix(err.Error(), EnvName+"=") {
				t.Fatalf("Parse(%q) err = %v, want an *Error naming the variable and value", value, err)
			}
			return
		}
		if len(paths) > MaxPaths {
			t.Fatalf("Parse(%q) = %d paths", value, len(paths))
		}
		names := map[string]bool{}
		for _, p := range paths {
			if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
				t.Fatalf("Parse(%q) gave %q, not a clean absolute path below /", value, p)
			}
			for _, sys := range systemDirs {
				if isUnder(p, sys) {
					t.Fatalf("Parse(%q) gave %q, under %s", value, p, sys)
				}
			}
			name := EncodePath(p)
			if name == "" || len(name) > MaxNameLen || strings.ContainsAny(name, "/\x00") || name[0] == '.' {
				t.Fatalf("EncodePath(%q) = %q: not a safe directory name", p, name)
			}
			if names[name] {
				t.Fatalf("Parse(%q): two paths encode to %q", value, name)
			}
			names[name] = true
			if back, err := DecodePath(name); err != nil || back != p {
				t.Fatalf("DecodePath(EncodePath(%q)) = %q, %v", p, back, err)
			}
		}
	})
}

func FuzzDecodePath(f *testing.F) {
	for _, s := range []string{"app-logs", "app%2Dlogs", "%2Ecache", "a--b", "a%2F", "a/b", "%", ".."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		p, err := DecodePath(name)
		if err != nil {
			return
		}
		// One-to-one: whatever decodes, encodes back to the same name.
		if got := EncodePath(p); got != name {
			t.Fatalf("EncodePath(DecodePath(%q) = %q) = %q", name, p, got)
		}
	})
}

func FuzzNewPlan(f *testing.F) {
	f.Add("/app/logs,/app/audit", "/etc/hosts", false, "web-0", "app")
	f.Add("/data/logs", "/data", true, "web-0", "app")
	f.Add("/etc", "/etc/hosts", false, "web-0", "app")
	f.Add("/a", "/a", false, "x", "y")
	f.Add("/a", "relative", false, "a_b", "../c")
	f.Fuzz(func(t *testing.T, value, mountDst string, ro bool, podName, ctrName string) {
		mount := &api.Mount{Destination: mountDst, Type: "bind", Source: "/src"}
		if ro {
			mount.Options = []string{"ro"}
		}
		pod := &api.PodSandbox{Name: podName, Namespace: "ns", Uid: "u-1"}
		ctr := &api.Container{Name: ctrName, Env: []string{EnvName + "=" + value}, Mounts: []*api.Mount{mount}}
		p, err := NewPlan("/logs", pod, ctr)
		if err != nil || p == nil {
			return
		}
		podDir := path.Join("/logs", p.PodDir)
		for _, m := range p.Mounts() {
			if path.Dir(path.Dir(m.Source)) != podDir || path.Dir(m.Source) != path.Join(podDir, ctrName) {
				t.Fatalf("mount source %q is not in %s/%s", m.Source, podDir, ctrName)
			}
			if dst := path.Clean(mountDst); path.IsAbs(mountDst) && (isUnder(m.Destination, dst) && ro || isUnder(dst, m.Destination)) {
				t.Fatalf("mount at %q clashes with %q (ro %v)", m.Destination, mountDst, ro)
			}
		}
		if _, _, uid, ok := ParsePodDirName(p.PodDir); !ok || uid != "u-1" {
			t.Fatalf("ParsePodDirName(%q) = %q, %v", p.PodDir, uid, ok)
		}
		missing, err := CheckRunning("/logs", pod, &api.Container{Name: ctrName, Env: ctr.Env, Mounts: p.Mounts()})
		if err != nil || len(missing) != 0 {
			t.Fatalf("CheckRunning with the planned mounts: missing %v, err %v", missing, err)
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
