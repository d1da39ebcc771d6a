package restconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const kubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443"}
users:
- name: u
  user: {token: t}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
`

func TestLoad_kubeconfigHasNoRateLimit(t *testing.T) {
	f := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(f, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(f)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://127.0.0.1:6443" || cfg.BearerToken != "t" {
		t.Errorf("host %q, token %q: not the kubeconfig's", cfg.Host, cfg.BearerToken)
	}
	if cfg.QPS != -1 {
		t.Errorf("QPS %v, want -1 (no client-side limit)", cfg.QPS)
	}
}

func TestLoad_missingKubeconfig(t *testing.T) {
	f := filepath.Join(t.TempDir(), "nope")
	_, err := Load(f)
	if err == nil || !strings.Contains(err.Error(), f) {
		t.Fatalf("err %v, want one naming %s", err, f)
	}
}
