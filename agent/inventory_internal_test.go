package agent

import (
	"context"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/inventory"
)

// script writes an executable shell script and returns its path.
func script(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hook")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestParseInventory(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		want      map[string]string
		err       string
	}{
		{name: "empty", out: "", want: map[string]string{}},
		{name: "pairs, comments and blank lines", out: "# made by the board\nboard_rev=C\n\n  serial = 0042 \nmodem=\n",
			want: map[string]string{"board_rev": "C", "serial": "0042", "modem": ""}},
		{name: "value with '='", out: "cmdline=a=b\n", want: map[string]string{"cmdline": "a=b"}},
		{name: "no '='", out: "board_rev C\n", err: "line 1: want key=value"},
		{name: "bad key", out: "ok=1\nbad key=1\n", err: `key "bad key"`},
		{name: "key twice", out: "a=1\na=2\n", err: "given twice"},
		{name: "value too long", out: "a=" + strings.Repeat("x", 300) + "\n", err: "at most 256 bytes"},
		{name: "too many", out: strings.Repeat("k=v\n", 1) + func() string {
			var b strings.Builder
			for i := range 70 {
				b.WriteString("k" + strconv.Itoa(i) + "=v\n")
			}
			return b.String()
		}(), err: "at most 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseInventory([]byte(tc.out))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseInventory = %v, %v; want an error saying %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !maps.Equal(got, tc.want) {
				t.Fatalf("ParseInventory = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestRunInventoryHook(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       map[string]string
		err        string
	}{
		{name: "good", body: "echo board_rev=C; echo serial=0042", want: map[string]string{"board_rev": "C", "serial": "0042"}},
		{name: "fails", body: "echo broken >&2; exit 3", err: "broken"},
		{name: "bad output", body: "echo not a pair", err: "want key=value"},
		{name: "too much output", body: "yes k=v | head -c 100000", err: "bytes of output"},
		{name: "too slow", body: "sleep 5", err: "timed out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := runInventoryHook(t.Context(), []string{script(t, tc.body)}, 300*time.Millisecond)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("hook = %v, %v; want an error saying %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !maps.Equal(got, tc.want) {
				t.Fatalf("hook = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestAttributes: the agent's own attributes, the free space of its
// storage directory, and the hook's keys beside them; a hook's bad output
// is ignored as a whole and the agent's own attributes still reported.
func TestAttributes(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, hook string
		extra      map[string]string // besides the agent's own
	}{
		{name: "no hook"},
		{name: "hook adds keys, cannot replace the agent's", hook: "echo board_rev=C; echo hardware=other",
			extra: map[string]string{"board_rev": "C"}},
		{name: "bad hook output is ignored", hook: "echo board_rev=C; echo '!!'"},
		{name: "failing hook is ignored", hook: "exit 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Hardware: "gw-a", AgentVersion: "ferry-agent/1.2.3", StorageDir: dir, InventoryTimeout: 5 * time.Second}
			if tc.hook != "" {
				cfg.InventoryHook = []string{script(t, tc.hook)}
			}
			a := &Agent{cfg: cfg, log: slog.New(slog.DiscardHandler)}
			got := a.attributes(context.Background())
			if got[inventory.Hardware] != "gw-a" || got[inventory.AgentVersion] != "1.2.3" {
				t.Errorf("attributes %v, want hardware gw-a and agent_version 1.2.3", got)
			}
			free, err := strconv.ParseUint(got[inventory.StorageFree], 10, 64)
			if err != nil || free == 0 || free%(1<<20) != 0 {
				t.Errorf("storage_free_bytes %q, want a positive number of whole MiB", got[inventory.StorageFree])
			}
			for k, v := range tc.extra {
				if got[k] != v {
					t.Errorf("attribute %s = %q, want %q (all: %v)", k, got[k], v, got)
				}
			}
			if _, ok := got["board_rev"]; ok && tc.extra["board_rev"] == "" {
				t.Errorf("attributes %v include the hook's output, which was to be ignored", got)
			}
			if err := inventory.Validate(got); err != nil {
				t.Errorf("attributes %v are not valid: %v", got, err)
			}
		})
	}
}

// inventoryStream records the Inventory messages an agent sends.
type inventoryStream struct {
	Stream
	sent []map[string]string
}

func (s *inventoryStream) SendInventory(attrs map[string]string) error {
	s.sent = append(s.sent, maps.Clone(attrs))
	return nil
}

// TestRefreshInventory: the attributes are collected again when the
// interval has passed or a job ended, and sent only when they changed.
func TestRefreshInventory(t *testing.T) {
	out := filepath.Join(t.TempDir(), "inventory.txt")
	write := func(s string) {
		if err := os.WriteFile(out, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("board_rev=C\n")
	now := time.Now()
	a := &Agent{log: slog.New(slog.DiscardHandler), cfg: Config{
		Hardware: "gw-a", InventoryHook: []string{script(t, "cat "+out)}, InventoryTimeout: 5 * time.Second,
		InventoryInterval: time.Hour, Now: func() time.Time { return now },
	}}
	a.inventorySent, a.inventoryNext = a.attributes(t.Context()), now.Add(time.Hour)
	s := &inventoryStream{}
	for _, step := range []struct {
		name    string
		do      func()
		wantRev string // "" : nothing sent
	}{
		{name: "nothing due", do: func() { write("board_rev=D\n"); now = now.Add(time.Minute) }},
		{name: "interval passed", do: func() { now = now.Add(time.Hour) }, wantRev: "D"},
		{name: "due, unchanged", do: func() { now = now.Add(2 * time.Hour) }},
		{name: "after a job", do: func() { write("board_rev=E\n"); a.inventoryStale = true }, wantRev: "E"},
		{name: "after a job, unchanged", do: func() { a.inventoryStale = true }},
		{name: "hook breaks: its keys dropped", do: func() { write("nonsense\n"); now = now.Add(2 * time.Hour) }, wantRev: "-"},
	} {
		before := len(s.sent)
		step.do()
		if err := a.refreshInventory(t.Context(), s); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		switch {
		case step.wantRev == "" && len(s.sent) != before:
			t.Errorf("%s: sent %v, want nothing", step.name, s.sent[before:])
		case step.wantRev == "-" && (len(s.sent) != before+1 || s.sent[before]["board_rev"] != "" || s.sent[before]["hardware"] != "gw-a"):
			t.Errorf("%s: sent %v, want the agent's own attributes only", step.name, s.sent[before:])
		case step.wantRev != "" && step.wantRev != "-" && (len(s.sent) != before+1 || s.sent[before]["board_rev"] != step.wantRev):
			t.Errorf("%s: sent %v, want board_rev=%s", step.name, s.sent[before:], step.wantRev)
		}
	}
}
