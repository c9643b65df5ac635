package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/creack/pty"

	"github.com/ferryhq/ferry/internal/ferrytest"
)

// runWithStderr runs ferryctl against f with its stderr on stderr and
// returns what it wrote on stdout.
func runWithStderr(t *testing.T, f *ferrytest.Ferryd, stderr io.Writer, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(stderr)
	cmd.SetArgs(append([]string{"--server", f.APIURL(), "--ca-file", f.Dev.CACert, "--token-file", f.Dev.OperatorToken}, args...))
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

// capture collects what is written to a file descriptor (a pipe or a
// pseudo-terminal) until its writing end is closed.
type capture struct {
	wg  sync.WaitGroup
	buf bytes.Buffer
}

func captureFrom(r *os.File) *capture {
	c := &capture{}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		_, _ = io.Copy(&c.buf, r) // a pty's master ends with EIO once the terminal side is closed
	}()
	return c
}

func (c *capture) wait() string { c.wg.Wait(); return c.buf.String() }

// transferSession initializes a repository with hash bins, publishes a
// bundle and fetches it back with stderr on the given file, and returns
// what each step wrote there.
func transferSession(t *testing.T, stderr func() (*os.File, func() string)) map[string]string {
	t.Helper()
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	dir := t.TempDir()
	passFile := filepath.Join(dir, "pass")
	if err := os.WriteFile(passFile, []byte("correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fw := filepath.Join(dir, "fw.bin")
	if err := os.WriteFile(fw, bytes.Repeat([]byte("firmware"), 200000), 0o600); err != nil { // 1.6 MB: several chunks
		t.Fatal(err)
	}
	repo := []string{"--repo-dir", filepath.Join(dir, "repo"), "--passphrase-file", passFile}
	steps := []struct {
		name string
		args []string
		want string
	}{
		{"init", append([]string{"repo", "init", "--hash-bins", "8"}, repo...), "8 hash bins"},
		{"publish", append([]string{"bundle", "publish", fw, "--name", "gw", "--version", "1.0.0-rc.10"}, repo...), "published gw/1.0.0-rc.10/fw.bin"},
		{"fetch", append([]string{"bundle", "fetch", "gw/1.0.0-rc.10/fw.bin", "-O", filepath.Join(dir, "fetched.bin")}, repo...), "verified gw/1.0.0-rc.10/fw.bin"},
	}
	got := map[string]string{}
	for _, st := range steps {
		w, written := stderr()
		out, err := runWithStderr(t, f, w, st.args...)
		got[st.name] = written()
		if err != nil {
			t.Fatalf("%s: %v\nstderr: %q", st.name, err, got[st.name])
		}
		if !strings.Contains(out, st.want) {
			t.Fatalf("%s: stdout lacks %q:\n%s", st.name, st.want, out)
		}
		if strings.Contains(out, "\r") {
			t.Errorf("%s: stdout holds carriage returns: %q", st.name, out)
		}
	}
	return got
}

// TestProgressOutsideTerminal: with stderr a pipe (a CI log, a file), a
// transfer writes no progress at all, and repo init one plain line per
// step, never carriage-return frames.
func TestProgressOutsideTerminal(t *testing.T) {
	got := transferSession(t, func() (*os.File, func() string) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		c := captureFrom(r)
		return w, func() string { w.Close(); s := c.wait(); r.Close(); return s }
	})
	for step, stderr := range got {
		if strings.Contains(stderr, "\r") {
			t.Errorf("%s wrote carriage-return frames into a pipe: %q", step, stderr)
		}
	}
	for _, step := range []string{"publish", "fetch"} {
		if got[step] != "" {
			t.Errorf("%s wrote progress into a pipe: %q", step, got[step])
		}
	}
	if want := "signing 8 hash bins\npublishing root\npublishing targets and 8 hash bins\n"; got["init"] != want {
		t.Errorf("init wrote %q into a pipe, want %q", got["init"], want)
	}
}

// TestProgressOnTerminal: with stderr a terminal (a pseudo-terminal),
// publish and fetch draw a bar with bytes, rate and time left, and init
// a bar over the hash bins.
func TestProgressOnTerminal(t *testing.T) {
	got := transferSession(t, func() (*os.File, func() string) {
		master, tty, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		if err := pty.Setsize(master, &pty.Winsize{Rows: 24, Cols: 160}); err != nil {
			t.Fatal(err)
		}
		c := captureFrom(master)
		return tty, func() string {
			tty.Close()
			s := c.wait()
			master.Close()
			return s
		}
	})
	for step, want := range map[string][]string{
		"init":    {"\r", "signing 8 hash bins", "8/8"},
		"publish": {"\r", "upload gw/1.0.0-rc.10/fw.bin", "100%", "1.5 MiB", "/s"},
		"fetch":   {"\r", "fetch gw/1.0.0-rc.10/fw.bin", "100%", "1.5 MiB", "/s"},
	} {
		for _, w := range want {
			if !strings.Contains(got[step], w) {
				t.Errorf("%s on a terminal lacks %q: %q", step, w, got[step])
			}
		}
	}
}
