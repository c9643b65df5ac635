package agent_test

import (
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/agent"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
)

// crashScenario is one update that a power loss interrupts.
type crashScenario struct {
	name string
	// unhealthy: the new bundle fails its health check.
	unhealthy bool
	// revert: while the device is down, its desired state goes back to
	// the bundle it had confirmed.
	revert bool
}

// TestCrashAtEveryPoint stops the agent, as a power loss would, right
// after each write, rename and removal it makes during an A/B update (the
// list comes from a first run that records every crash point the code
// passes, so a new write is tested as soon as it exists), starts it again,
// and checks that the device ends booting a confirmed slot, that a new
// bundle it boots passed a health check, that what it stores and signs is
// what it boots, and that it kept no download.
func TestCrashAtEveryPoint(t *testing.T) {
	w := newWorld(t)
	v1 := w.add(t, "gateway/1.0.0/fw.bin", 8<<10)
	v2 := w.add(t, "gateway/2.0.0/fw.bin", 8<<10)
	scenarios := []crashScenario{
		{name: "update"},
		{name: "update, then desired back to the confirmed bundle", revert: true},
		{name: "update whose health check fails", unhealthy: true},
	}
	n := 0
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			n++
			points := w.crashRun(t, fmt.Sprintf("rec-%d", n), sc, v1, v2, -1, "")
			t.Logf("%d crash points: %s", len(points), strings.Join(points, ", "))
			// Every step writes: the state (intent, installed, committed or
			// rolled back, final, accepted), the slot and the boot link.
			for _, want := range []string{"rename state.json", "rename bundle", "rename boot", "write " + v2.GetSha256() + ".part", "remove " + v2.GetSha256() + ".part"} {
				if !slices.Contains(points, want) {
					t.Fatalf("no crash point %q among %v", want, points)
				}
			}
			for k, p := range points {
				n++
				t.Run(fmt.Sprintf("%02d %s", k+1, strings.ReplaceAll(p, v2.GetSha256(), "<v2>")), func(t *testing.T) {
					w.crashRun(t, fmt.Sprintf("crash-%d", n), sc, v1, v2, k, p)
				})
			}
		})
	}
}

// crashRun installs v1 on a new device, then sets v2 and stops the agent
// at its crash point k (k < 0: none; it returns the points passed), starts
// it again and checks the outcome.
func (w *world) crashRun(t *testing.T, id string, sc crashScenario, v1, v2 *devicev1.Bundle, k int, point string) []string {
	d := w.newDevice(t, id)
	stop := w.background(t, d, nil)
	w.waitSettled(t, d, w.setDesired(t, d, v1, map[string]string{"mode": "old"}))
	stop()
	d.unhealthy = sc.unhealthy

	var (
		mu      sync.Mutex
		calls   []string
		crashed = make(chan struct{})
	)
	restore := agent.SetCrashHook(func(p string) {
		mu.Lock()
		i := len(calls)
		calls = append(calls, p)
		mu.Unlock()
		if i == k {
			close(crashed)
			select {} // the power is gone: nothing after this point runs
		}
	})
	defer restore()
	version := w.setDesired(t, d, v2, map[string]string{"mode": "new"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.run(ctx, d, nil) }()
	if k < 0 {
		w.waitSettled(t, d, version)
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("agent: %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(calls)
	}
	select {
	case <-crashed:
	case err := <-done:
		t.Fatalf("the agent ended (%v) before crash point %d, %q", err, k+1, point)
	case <-time.After(20 * time.Second):
		mu.Lock()
		t.Fatalf("crash point %d, %q, not reached; passed %v", k+1, point, calls)
	}
	mu.Lock()
	if got := calls[k]; got != point {
		t.Fatalf("crash point %d is %q, the recording said %q: the sequence is not repeatable (%v)", k+1, got, point, calls)
	}
	mu.Unlock()
	restore()
	cancel() // its connections end, as the device's did when it lost power

	want := v2
	if sc.revert {
		want = v1
		version = w.setDesired(t, d, v1, map[string]string{"mode": "old"})
	}
	stop = w.background(t, d, nil)
	dev := w.waitSettled(t, d, version)
	stop()

	sha, committed := d.booted()
	job := dev.GetJob()
	t.Logf("job %s %s %s; boots %s", job.GetStatus(), job.GetStep(), job.GetErrorCode(), shortSHA(sha))
	if !committed {
		t.Errorf("the device boots a slot that is not confirmed")
	}
	if cur := d.state(t).Current.Bundle; cur == nil || cur.SHA256 != sha {
		t.Errorf("the agent's state says it runs %v, the device boots %s", cur, shortSHA(sha))
	}
	if signed := w.signed(t, dev); signed.Bundle == nil || signed.Bundle.SHA256 != sha {
		t.Errorf("the device signed that it runs %v, it boots %s", signed.Bundle, shortSHA(sha))
	}
	switch {
	case job.GetStatus() == devicev1.JobStatus_JOB_STATUS_SUCCEEDED && sha != want.GetSha256():
		t.Errorf("job SUCCEEDED for %s, the device boots %s", shortSHA(want.GetSha256()), shortSHA(sha))
	case job.GetStatus() != devicev1.JobStatus_JOB_STATUS_SUCCEEDED && sha != v1.GetSha256():
		t.Errorf("job %s, and the device boots %s, not the bundle it had (%s)", job.GetStatus(), shortSHA(sha), shortSHA(v1.GetSha256()))
	}
	if sha == v2.GetSha256() && !slices.Contains(d.checked, sha) {
		t.Errorf("the device boots %s, which never passed a health check (checks saw %v)", shortSHA(sha), d.checked)
	}
	if sc.unhealthy && sha != v1.GetSha256() {
		t.Errorf("the device boots %s, whose health check fails", shortSHA(sha))
	}
	if !sc.unhealthy && !sc.revert && job.GetStatus() != devicev1.JobStatus_JOB_STATUS_SUCCEEDED && job.GetErrorCode() != agent.CodeInstallInterrupted {
		t.Errorf("job %s %s: a crash may fail the install (%s), nothing else", job.GetStatus(), job.GetErrorCode(), agent.CodeInstallInterrupted)
	}
	if left := dirEntries(t, d.downloads()); len(left) > 0 {
		t.Errorf("downloads left behind: %v", left)
	}
	return nil
}

// TestFileChangesGoThroughCrashPoints keeps TestCrashAtEveryPoint
// complete: outside disk.go, no file of the package calls a function that
// changes files, so every change passes a crash point.
func TestFileChangesGoThroughCrashPoints(t *testing.T) {
	changes := map[string]bool{
		"Create": true, "CreateTemp": true, "OpenFile": true, "WriteFile": true, "Rename": true, "Remove": true,
		"RemoveAll": true, "Symlink": true, "Link": true, "Truncate": true, "Chmod": true, "Chtimes": true,
		"Mkdir": true, "MkdirAll": true, "MkdirTemp": true, "Lchown": true, "Chown": true,
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") || name == "disk.go" {
			continue
		}
		checked++
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "os" && changes[sel.Sel.Name] {
				t.Errorf("%s calls os.%s: change files through disk.go, where every change is a crash point", name, sel.Sel.Name)
			}
			return true
		})
	}
	if checked < 5 {
		t.Fatalf("checked %d files; is the test in the package directory?", checked)
	}
}
