package tuf

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpenKMSRefusals(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no plugins
	tests := []struct {
		ref, want string
	}{
		{"not-a-reference", "want a reference <scheme>://<key>"},
		{"nosuchkms://key", "no plugin sigstore-kms-nosuchkms on PATH"},
	}
	for _, tt := range tests {
		_, err := OpenKMS(context.Background(), tt.ref)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("OpenKMS(%q): %v, want %q", tt.ref, err, tt.want)
		}
	}
}

func TestRetireKMSReferences(t *testing.T) {
	ring := KeyRing{Dir: t.TempDir()}
	for _, name := range []string{"targets-aaaa.kms", "targets-bbbb.kms", "targets-cccc.pem", "root-aaaa.kms"} {
		if err := os.WriteFile(filepath.Join(ring.Dir, name), []byte("x://y\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := ring.Retire("targets", []string{"bbbb0123"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		file    string
		retired bool
	}{
		{"targets-aaaa.kms", true},
		{"targets-bbbb.kms", false},
		{"targets-cccc.pem", true},
		{"root-aaaa.kms", false},
	}
	for _, tt := range tests {
		dir := ring.Dir
		if tt.retired {
			dir = filepath.Join(ring.Dir, "retired")
		}
		if _, err := os.Stat(filepath.Join(dir, tt.file)); err != nil {
			t.Errorf("%s (retired %v): %v", tt.file, tt.retired, err)
		}
	}
}
