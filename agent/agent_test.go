package agent

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCompareVersions(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"1.0.0", "1.0.0", 0},
		{"2.0.0", "1.9.9", 1},
		{"1.9.2", "1.10.0", -1},
		{"1.0.0-rc.9", "1.0.0-rc.10", -1},
		{"1.0.0-beta.2", "1.0.0-beta.11", -1},
		{"2.0.0+build5", "2.0.0", 0},
		{"1.2", "1.2.0", 0},
		{"v1.2", "1.2", 0},
		{"v2.0.0", "1.0.0", 1},
		{"1.2", "1.2.1", -1},
		{"1.2.0-rc1", "1.2.0", -1},
		{"1.2.0", "1.2.0-rc1", 1},
		{"1.2.0-rc1", "1.2.0-rc2", -1},
		{"1.0.0-alpha.1", "1.0.0-alpha.beta", -1},
		{"1.0.0-beta.11", "1.0.0-rc.1", -1},
		{"2024.05a", "0.0.1", -1},
		{"", "1", -1},
	}
	for _, tc := range tests {
		t.Run(tc.a+"_vs_"+tc.b, func(t *testing.T) {
			if got := CompareVersions(tc.a, tc.b); got != tc.want {
				t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
			}
			if got := CompareVersions(tc.b, tc.a); got != -tc.want {
				t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.b, tc.a, got, -tc.want)
			}
		})
	}
}

func TestParseBundleInfo(t *testing.T) {
	tests := []struct {
		name    string
		custom  string
		want    BundleInfo
		wantErr bool
	}{
		{name: "absent", custom: ""},
		{name: "null", custom: "null"},
		{name: "other tool's metadata", custom: `{"other":{"x":1}}`},
		{name: "ferry", custom: `{"ferry":{"name":"gw","version":"2.0.0","hardware":["a","b"],"downgrade_allowed":true}}`,
			want: BundleInfo{Name: "gw", Version: "2.0.0", Hardware: []string{"a", "b"}, DowngradeAllowed: true}},
		{name: "malformed", custom: `{"ferry":`, wantErr: true},
		{name: "wrong type", custom: `{"ferry":{"hardware":"a"}}`, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseBundleInfo([]byte(tc.custom))
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error %v", err, tc.wantErr)
			}
			if got.Name != tc.want.Name || got.Version != tc.want.Version || !slices.Equal(got.Hardware, tc.want.Hardware) || got.DowngradeAllowed != tc.want.DowngradeAllowed {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// FuzzParseBundleInfo: custom metadata comes from the repository; it must
// never panic.
func FuzzParseBundleInfo(f *testing.F) {
	f.Add([]byte(`{"ferry":{"name":"gw","version":"2.0.0","hardware":["a"]}}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"ferry":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := ParseBundleInfo(b)
		if err != nil && (info.Name != "" || info.Version != "" || info.Hardware != nil) {
			t.Errorf("error %v with a non-zero result %+v", err, info)
		}
	})
}

func FuzzCompareVersions(f *testing.F) {
	f.Add("1.2.3", "1.2.4-rc1")
	f.Add("", "v")
	f.Fuzz(func(t *testing.T, a, b string) {
		if CompareVersions(a, b) != -CompareVersions(b, a) {
			t.Errorf("CompareVersions(%q, %q) is not antisymmetric", a, b)
		}
		if CompareVersions(a, a) != 0 {
			t.Errorf("CompareVersions(%q, %q) != 0", a, a)
		}
	})
}

func TestHookEnv(t *testing.T) {
	job := Job{ID: "job-1", DesiredVersion: 7, Bundle: &Bundle{TargetPath: "gw/2.0.0/fw.bin", Length: 42, SHA256: "ab"},
		Version: "2.0.0", Path: "/tmp/fw", Config: map[string]string{"log.level": "debug", "a-b": "c"}}
	got := HookEnv("install", job)
	want := []string{
		"FERRY_ACTION=install", "FERRY_JOB_ID=job-1", "FERRY_DESIRED_VERSION=7", "FERRY_BUNDLE_PATH=/tmp/fw",
		"FERRY_TARGET_PATH=gw/2.0.0/fw.bin", "FERRY_BUNDLE_SHA256=ab", "FERRY_BUNDLE_LENGTH=42", "FERRY_BUNDLE_VERSION=2.0.0",
		"FERRY_CONFIG_A_B=c", "FERRY_CONFIG_LOG_LEVEL=debug",
	}
	if !slices.Equal(got, want) {
		t.Errorf("HookEnv:\n got %q\nwant %q", got, want)
	}
}

func TestExec(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "hook.sh")
	// The hook records its action and environment, and fails on "health".
	body := "#!/bin/sh\necho \"$1 $FERRY_ACTION $FERRY_JOB_ID $FERRY_BUNDLE_SHA256\" >> " + filepath.Join(dir, "log") +
		"\n[ \"$1\" = health ] && { echo service down; exit 3; }\nexit 0\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	e := Exec{Command: []string{"/bin/sh", script}}
	job := Job{ID: "j", Bundle: &Bundle{SHA256: "ff"}}
	ctx := context.Background()
	tests := []struct {
		name    string
		run     func() error
		wantErr string
	}{
		{"install", func() error { return e.Install(ctx, job) }, ""},
		{"commit", func() error { return e.Commit(ctx, job) }, ""},
		{"health fails with its output", func() error { return e.Check(ctx, job) }, "service down"},
		{"rollback", func() error { return e.Rollback(ctx, job) }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
		})
	}
	log, err := os.ReadFile(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "install install j ff\ncommit commit j ff\nhealth health j ff\nrollback rollback j ff\n"; string(log) != want {
		t.Errorf("hook saw:\n%s\nwant:\n%s", log, want)
	}
}

func TestAB(t *testing.T) {
	dir := t.TempDir()
	ab := &AB{Dir: dir}
	ctx := context.Background()
	write := func(name, data string) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	type slots struct{ booted, confirmed string }
	tests := []struct {
		name string
		do   func() error
		want slots
		// bundle is what the booted slot holds afterwards.
		bundle string
	}{
		{"install v2 goes to slot b and boots it", func() error { return ab.Install(ctx, Job{Path: write("v2", "two")}) }, slots{SlotB, SlotA}, "two"},
		{"commit confirms b", func() error { return ab.Commit(ctx, Job{}) }, slots{SlotB, SlotB}, "two"},
		{"install v3 goes to slot a", func() error { return ab.Install(ctx, Job{Path: write("v3", "three")}) }, slots{SlotA, SlotB}, "three"},
		{"rollback boots b again", func() error { return ab.Rollback(ctx, Job{}) }, slots{SlotB, SlotB}, "two"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); err != nil {
				t.Fatal(err)
			}
			b, err := ab.Booted()
			if err != nil {
				t.Fatal(err)
			}
			c, err := ab.Confirmed()
			if err != nil {
				t.Fatal(err)
			}
			if (slots{b, c}) != tc.want {
				t.Errorf("booted %s, confirmed %s, want %+v", b, c, tc.want)
			}
			data, err := os.ReadFile(filepath.Join(dir, "boot", "bundle"))
			if err != nil || string(data) != tc.bundle {
				t.Errorf("booted slot holds %q (%v), want %q", data, err, tc.bundle)
			}
		})
	}
}

func TestStateStores(t *testing.T) {
	p := Persisted{
		LastApplied: 3,
		Current:     State{Bundle: &Bundle{TargetPath: "gw/1/fw", Length: 1, SHA256: "aa"}, Version: "1", Config: map[string]string{"k": "v"}},
		Pending:     &Pending{JobID: "j", DesiredVersion: 4, Next: State{Version: "2"}},
		Outbox:      &Result{JobID: "j0", DesiredVersion: 3, Status: StatusRolledBack, Step: StepConfirming, ErrorCode: CodeHealthFailed},
	}
	tests := []struct {
		name  string
		store StateStore
	}{
		{"file", FileStore{Path: filepath.Join(t.TempDir(), "state.json")}},
		{"memory", &MemoryStore{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			empty, err := tc.store.Load(ctx)
			if err != nil || empty.LastApplied != 0 || empty.Pending != nil {
				t.Fatalf("a new store loads %+v, %v", empty, err)
			}
			if err := tc.store.Save(ctx, p); err != nil {
				t.Fatal(err)
			}
			got, err := tc.store.Load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got.LastApplied != 3 || got.Current.Bundle.SHA256 != "aa" || got.Current.Config["k"] != "v" ||
				got.Pending.Next.Version != "2" || got.Outbox.Status != StatusRolledBack || got.Outbox.Step != StepConfirming {
				t.Errorf("loaded %+v, saved %+v", got, p)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	a, err := New(Config{Link: nopLink{}, Credentials: &Credentials{}, Store: &MemoryStore{}, Installer: &AB{},
		TrustedRoot: []byte("{}"), DownloadDir: t.TempDir(), MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		failures int
		max      time.Duration
	}{{1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {4, 800 * time.Millisecond}, {10, 2 * time.Second}, {100, 2 * time.Second}}
	for _, tc := range tests {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := a.backoff(tc.failures)
			if d < 50*time.Millisecond || d > tc.max {
				t.Fatalf("backoff(%d) = %v, want in [50ms, %v]", tc.failures, d, tc.max)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("backoff(%d) has no jitter: %d distinct delays in 200", tc.failures, len(seen))
		}
	}
}

type nopLink struct{ Link }
