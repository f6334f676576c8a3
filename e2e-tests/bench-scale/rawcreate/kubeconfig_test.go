package main

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var caB64 = base64.StdEncoding.EncodeToString([]byte("CA-PEM"))

func TestCredentialsFromKubeconfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), []byte("CA-FROM-FILE"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name       string
		src        string
		wantServer string
		wantCA     string
		wantToken  string
		wantCert   string
		wantErr    string
	}{
		{
			name: "local_cluster_layout_indented_sequences",
			src: `apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:36643
    certificate-authority-data: ` + caB64 + `
users:
- name: admin
  user:
    token: abc123
contexts:
- name: local
  context:
    cluster: local
    user: admin
current-context: local
`,
			wantServer: "https://127.0.0.1:36643", wantCA: "CA-PEM", wantToken: "abc123",
		},
		{
			name: "kubectl_layout_two_contexts_quotes_comments_client_cert",
			src: `# written by kubectl
apiVersion: v1
clusters:
  - cluster:
      certificate-authority: ca.crt
      server: "https://127.0.0.1:6443"   # the local one
    name: a
  - cluster:
      server: https://example.invalid
    name: b
contexts:
  - context: {}
    name: empty
  - context:
      cluster: a
      user: 'cert-user'
    name: ctx-a
current-context: ctx-a
kind: Config
preferences: {}
users:
- name: cert-user
  user:
    client-certificate-data: ` + base64.StdEncoding.EncodeToString([]byte("CERT")) + `
    client-key-data: ` + base64.StdEncoding.EncodeToString([]byte("KEY")) + `
`,
			wantServer: "https://127.0.0.1:6443", wantCA: "CA-FROM-FILE", wantCert: "CERT",
		},
		{
			name:    "missing_current_context",
			src:     "apiVersion: v1\nclusters: []\n",
			wantErr: "no current-context",
		},
		{
			name:    "context_names_an_absent_cluster",
			src:     "contexts:\n- name: x\n  context:\n    cluster: nope\ncurrent-context: x\n",
			wantErr: `no cluster named "nope"`,
		},
		{
			name:    "no_credentials",
			src:     "clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: x\n  context:\n    cluster: c\ncurrent-context: x\n",
			wantErr: "neither a token nor a client certificate",
		},
		{
			name:    "block_scalar_is_outside_the_subset",
			src:     "current-context: x\nclusters:\n- name: c\n  cluster:\n    server: |\n      https://x\n",
			wantErr: "outside the YAML subset",
		},
		{
			name:    "bad_indentation",
			src:     "a: 1\n   b: 2\n",
			wantErr: "unexpected indentation",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := credentialsFromKubeconfig(tc.src, dir, "")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error containing %q, got %v", tc.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Server != tc.wantServer || string(c.CAPEM) != tc.wantCA || c.Token != tc.wantToken || string(c.ClientCert) != tc.wantCert {
				t.Fatalf("got server=%q ca=%q token=%q cert=%q", c.Server, c.CAPEM, c.Token, c.ClientCert)
			}
		})
	}
}

func TestPodBodyBecomesAGenerateNamePod(t *testing.T) {
	f := filepath.Join(t.TempDir(), "pod.json")
	if err := os.WriteFile(f, []byte(`{"metadata":{"name":"fixed","labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"i"}]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := podBody(f, "ns1", "w-")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`"generateName":"w-"`, `"namespace":"ns1"`, `"kind":"Pod"`, `"labels":{"a":"b"}`} {
		if !strings.Contains(s, want) {
			t.Errorf("%s lacks %s", s, want)
		}
	}
	if strings.Contains(s, `"name":"fixed"`) {
		t.Errorf("metadata.name kept: %s", s)
	}
}

func TestPercentiles(t *testing.T) {
	cases := []struct {
		name          string
		ms            []int
		p50, p99, max float64
	}{
		{"empty", nil, 0, 0, 0},
		{"one", []int{7}, 7, 7, 7},
		{"hundred", seq(100), 50, 99, 100},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var d []time.Duration
			for _, m := range tc.ms {
				d = append(d, time.Duration(m)*time.Millisecond)
			}
			p50, p99, mx := percentiles(d)
			if p50 != tc.p50 || p99 != tc.p99 || mx != tc.max {
				t.Fatalf("got %v %v %v", p50, p99, mx)
			}
		})
	}
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = n - i // reversed: percentiles sorts
	}
	return out
}
