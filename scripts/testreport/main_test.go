package main

import (
	"strings"
	"testing"
	"time"
)

func TestReport(t *testing.T) {
	const m = "github.com/ferryhq/ferry"
	ev := func(action, pkg, test, output string) string {
		s := `{"Action":"` + action + `","Package":"` + m + "/" + pkg + `"`
		if test != "" {
			s += `,"Test":"` + test + `"`
		}
		if output != "" {
			s += `,"Output":"` + output + `\n"`
		}
		return s + `,"Elapsed":1.5}`
	}
	tests := []struct {
		name     string
		lines    []string
		wantCode int
		want     []string
	}{
		{"passing package", []string{
			ev("start", "store/redis", "", ""),
			ev("pass", "store/redis", "TestConformance/A", ""),
			ev("pass", "store/redis", "TestConformance/B", ""),
			ev("pass", "store/redis", "TestConformance", ""),
			ev("pass", "store/redis", "TestOther", ""),
			ev("pass", "store/redis", "", ""),
		}, 0, []string{"ok   store/redis", "2 tests, 2 subtests", "store/redis: 2 conformance subtests passed"}},
		{"failing test shows its output", []string{
			ev("output", "agent", "TestX", "boom: want 1"),
			ev("fail", "agent", "TestX", ""),
			ev("fail", "agent", "", ""),
		}, 1, []string{"FAIL agent", "--- output of agent ---", "boom: want 1", "agent TestX"}},
		{"skipped test", []string{
			ev("skip", "tuf", "TestY", ""),
			ev("pass", "tuf", "", ""),
		}, 1, []string{"skipped (the suite must run everything)", "tuf TestY"}},
		{"build failure", []string{
			`{"ImportPath":"` + m + `/server [` + m + `/server.test]","Action":"build-output","Output":"x.go:1: undefined: y\n"}`,
			`{"ImportPath":"` + m + `/server [` + m + `/server.test]","Action":"build-fail"}`,
			ev("fail", "server", "", ""),
		}, 1, []string{"FAIL server", "undefined: y", "[build failed]"}},
		{"other lines pass through", []string{"go: downloading x", ev("skip", "cmd/x", "", "")}, 0, []string{"go: downloading x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			code := run(strings.NewReader(strings.Join(tt.lines, "\n")), newReport(&out, m, m+"/store/redis", time.Now), time.Minute)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d", code, tt.wantCode)
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestHeartbeat(t *testing.T) {
	now := time.Unix(0, 0)
	var out strings.Builder
	r := newReport(&out, "m", "", func() time.Time { return now })
	r.line(`{"Action":"start","Package":"m/slow"}`)
	r.heartbeat(time.Minute)
	if out.Len() != 0 {
		t.Errorf("heartbeat before a minute of silence: %q", out.String())
	}
	now = now.Add(time.Minute)
	r.heartbeat(time.Minute)
	if !strings.Contains(out.String(), "still running: slow (1m0s)") {
		t.Errorf("heartbeat = %q", out.String())
	}
}
