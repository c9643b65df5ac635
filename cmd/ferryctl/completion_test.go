package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCompletionScripts(t *testing.T) {
	// A broken config file must not stop a shell from loading the script.
	broken := filepath.Join(t.TempDir(), "broken.yaml")
	if err := os.WriteFile(broken, []byte("bogus: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(configEnv, broken)
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		t.Run(shell, func(t *testing.T) {
			out, err := runLocal(t, "completion", shell)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if len(out) < 100 || !strings.Contains(out, "ferryctl") {
				t.Fatalf("completion %s printed %d bytes:\n%.300s", shell, len(out), out)
			}
		})
	}
}

func TestFlagCompletion(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string // completions, then the directive line
	}{
		{"output", []string{"__complete", "device", "list", "--output", ""}, []string{"table", "json", ":4"}},
		{"output, short flag", []string{"__complete", "config", "view", "-o", ""}, []string{"table", "json", ":4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runLocal(t, tt.args...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			// Cobra ends with "Completion ended with directive: …" on stderr, here the same buffer.
			var got []string
			for _, l := range lines {
				if !strings.HasPrefix(l, "Completion ended") {
					got = append(got, l)
				}
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
