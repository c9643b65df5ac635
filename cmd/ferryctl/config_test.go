package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ferryhq/ferry/internal/ferrytest"
)

// TestMain keeps the tests away from the user's settings: no FERRY_*
// variable, and an empty user config directory.
func TestMain(m *testing.M) {
	for _, s := range settings {
		if s.env != "" {
			os.Unsetenv(s.env)
		}
	}
	os.Unsetenv(configEnv)
	dir, err := os.MkdirTemp("", "ferryctl-config")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("XDG_CONFIG_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runLocal runs ferryctl with exactly args (no server flags added).
func runLocal(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

// viewRow is one setting as config view printed it.
type viewRow struct{ value, source string }

// parseView reads config view's table.
func parseView(t *testing.T, out string) map[string]viewRow {
	t.Helper()
	rows := map[string]viewRow{}
	cols := regexp.MustCompile(`\s{2,}`)
	in := false
	for line := range strings.SplitSeq(out, "\n") {
		switch {
		case strings.HasPrefix(line, "SETTING"):
			in = true
		case in && strings.TrimSpace(line) == "":
			in = false
		case in:
			f := cols.Split(strings.TrimSpace(line), 3)
			if len(f) != 3 {
				t.Fatalf("config view line %q", line)
			}
			rows[f[0]] = viewRow{f[1], f[2]}
		}
	}
	return rows
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	full := write("full.yaml", "server: https://file.example:8443\ntoken-file: op.token\nca-file: /etc/ferry/ca.pem\noutput: table\n")
	withToken := write("token.yaml", "token: secret-from-file\n")
	empty := write("empty.yaml", "")
	comments := write("comments.yaml", "# nothing set\n")
	home, _ := os.UserHomeDir()
	tilde := write("tilde.yaml", "ca-file: ~/ca.pem\n")

	tests := []struct {
		name string
		args []string          // before "config view"
		env  map[string]string // set for the case
		// defaultFile, when set, is written as the user's default config file.
		defaultFile string
		want        map[string]viewRow // settings that must be shown so
		credential  string             // the operator credential line
		absent      string             // must not be in the output
		wantErr     string
	}{
		{name: "built-in defaults", want: map[string]viewRow{
			"server": {"https://localhost:8443", "default"}, "token": {"-", "default"},
			"token-file": {"-", "default"}, "output": {"table", "default"}}, credential: "none"},
		{name: "file", args: []string{"--config", full}, want: map[string]viewRow{
			"server":     {"https://file.example:8443", "file " + full},
			"token-file": {filepath.Join(dir, "op.token"), "file " + full},
			"ca-file":    {"/etc/ferry/ca.pem", "file " + full},
			"output":     {"table", "file " + full}}, credential: "token-file"},
		{name: "FERRY_CONFIG names the file", env: map[string]string{configEnv: full}, want: map[string]viewRow{
			"server": {"https://file.example:8443", "file " + full}}},
		{name: "--config beats FERRY_CONFIG", args: []string{"--config", full}, env: map[string]string{configEnv: withToken},
			want: map[string]viewRow{"token": {"-", "default"}}},
		{name: "env beats file", args: []string{"--config", full},
			env: map[string]string{"FERRY_SERVER": "https://env.example", "FERRY_CA_FILE": ""}, want: map[string]viewRow{
				"server": {"https://env.example", "env FERRY_SERVER"}, "ca-file": {"-", "env FERRY_CA_FILE"},
				"token-file": {filepath.Join(dir, "op.token"), "file " + full}}},
		{name: "flag beats env and file", args: []string{"--config", full, "--server", "https://flag.example"},
			env: map[string]string{"FERRY_SERVER": "https://env.example"}, want: map[string]viewRow{
				"server": {"https://flag.example", "flag --server"}}},
		{name: "flag beats env", args: []string{"--server", "https://flag.example", "--token-file", "/tmp/t"},
			env: map[string]string{"FERRY_SERVER": "https://env.example", "FERRY_TOKEN_FILE": "/env/t"}, want: map[string]viewRow{
				"server": {"https://flag.example", "flag --server"}, "token-file": {"/tmp/t", "flag --token-file"}}},
		{name: "token redacted", args: []string{"--config", withToken}, want: map[string]viewRow{
			"token": {"(redacted)", "file " + withToken}}, credential: "token", absent: "secret-from-file"},
		{name: "token file from a flag beats a token from the file", args: []string{"--config", withToken, "--token-file", "/x/t"},
			credential: "token-file"},
		{name: "token from env beats a token file from the file", args: []string{"--config", full},
			env: map[string]string{"FERRY_TOKEN": "secret-env"}, credential: "token", absent: "secret-env"},
		{name: "empty token from a flag leaves the token file", args: []string{"--config", full, "--token", ""},
			credential: "token-file"},
		{name: "default file", defaultFile: "server: https://default-file.example\n", want: map[string]viewRow{
			"server": {"https://default-file.example", "file "}}},
		{name: "--config \"\" reads no file", args: []string{"--config", ""}, defaultFile: "server: https://default-file.example\n",
			want: map[string]viewRow{"server": {"https://localhost:8443", "default"}}},
		{name: "empty file", args: []string{"--config", empty}, want: map[string]viewRow{"server": {"https://localhost:8443", "default"}}},
		{name: "comments only", args: []string{"--config", comments}, want: map[string]viewRow{"output": {"table", "default"}}},
		{name: "home directory", args: []string{"--config", tilde}, want: map[string]viewRow{"ca-file": {filepath.Join(home, "ca.pem"), "file " + tilde}}},

		{name: "missing --config", args: []string{"--config", filepath.Join(dir, "nope.yaml")}, wantErr: "no such file"},
		{name: "missing FERRY_CONFIG", env: map[string]string{configEnv: filepath.Join(dir, "nope.yaml")}, wantErr: "no such file"},
		{name: "unknown key", args: []string{"--config", write("unknown.yaml", "server: x\ntokn: y\n")},
			wantErr: "line 2: unknown key tokn (known: server, token, token-file, ca-file, output)"},
		{name: "bad syntax", args: []string{"--config", write("bad.yaml", "server: [x\n")}, wantErr: "config file " + filepath.Join(dir, "bad.yaml")},
		{name: "not a mapping", args: []string{"--config", write("list.yaml", "- server\n")}, wantErr: "into a mapping of settings"},
		{name: "two documents", args: []string{"--config", write("two.yaml", "server: a\n---\nserver: b\n")}, wantErr: "one YAML document"},
		{name: "bad output in the file", args: []string{"--config", write("out.yaml", "output: yaml\n")}, wantErr: `output "yaml" (from file`},
		{name: "bad output flag", args: []string{"-o", "text"}, wantErr: `output "text" (from flag --output): want table or json`},
		{name: "a broken default file is an error too", defaultFile: "bogus: 1\n", wantErr: "unknown key bogus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfgHome := t.TempDir()
			t.Setenv("XDG_CONFIG_HOME", cfgHome)
			if tt.defaultFile != "" {
				p := filepath.Join(cfgHome, configDirName, configFileName)
				if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(tt.defaultFile), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			out, err := runLocal(t, append(tt.args, "config", "view")...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q\n%s", err, tt.wantErr, out)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			rows := parseView(t, out)
			for name, w := range tt.want {
				got := rows[name]
				if got.value != w.value || !strings.HasPrefix(got.source, w.source) {
					t.Errorf("%s = %q from %q, want %q from %q\n%s", name, got.value, got.source, w.value, w.source, out)
				}
			}
			if tt.credential != "" && !strings.Contains(out, "operator credential: "+tt.credential) {
				t.Errorf("credential: want %q\n%s", tt.credential, out)
			}
			if tt.absent != "" && strings.Contains(out, tt.absent) {
				t.Errorf("output shows %q\n%s", tt.absent, out)
			}
		})
	}
}

func TestConfigViewJSON(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "ferryctl.yaml")
	if err := os.WriteFile(p, []byte("server: https://file.example\ntoken: s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FERRY_CA_FILE", "/env/ca.pem")
	out, err := runLocal(t, "--config", p, "--token-file", "/flag/token", "-o", "json", "config", "view")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if strings.Contains(out, "s3cret") {
		t.Fatalf("the token is shown:\n%s", out)
	}
	var v configView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if v.ConfigFile != p || !v.Found || v.Credential != "token-file" {
		t.Errorf("file %q found %v credential %q", v.ConfigFile, v.Found, v.Credential)
	}
	want := map[string]viewSetting{
		"server":     {"server", "https://file.example", "file " + p},
		"token":      {"token", "(redacted)", "file " + p},
		"token-file": {"token-file", "/flag/token", "flag --token-file"},
		"ca-file":    {"ca-file", "/env/ca.pem", "env FERRY_CA_FILE"},
		"output":     {"output", "json", "flag --output"},
	}
	if len(v.Settings) != len(want) {
		t.Fatalf("%d settings, want %d", len(v.Settings), len(want))
	}
	for _, s := range v.Settings {
		if s != want[s.Name] {
			t.Errorf("%+v, want %+v", s, want[s.Name])
		}
	}
}

// TestConfigFileConnects: a command takes its connection settings from the
// config file alone.
func TestConfigFileConnects(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	p := filepath.Join(t.TempDir(), "ferryctl.yaml")
	cfg := fmt.Sprintf("server: %s\nca-file: %s\ntoken-file: %s\noutput: json\n", f.APIURL(), f.Dev.CACert, f.Dev.OperatorToken)
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(configEnv, p)
	out, err := runLocal(t, "fleet", "summary")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, `"totalDevices"`) {
		t.Errorf("not JSON from the file's output setting:\n%s", out)
	}
}
