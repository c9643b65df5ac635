// Command testreport follows `go test -json` as it runs, for scripts/test:
// it prints each package's result when the package ends, says which
// packages are still running when nothing else was printed for a while,
// and at the end prints the output of what failed, refuses skipped tests,
// and counts a package's conformance subtests.
//
//	go test -json ./... | testreport [-conformance pkg] [-conformance-note text] [-heartbeat 30s]
//
// It exits 1 if a test or a build failed, or a test was skipped.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string // build-output and build-fail events
	Test       string
	Elapsed    float64
	Output     string
}

// pkgState is what is known of one package.
type pkgState struct {
	started         time.Time
	output          []string
	tests, subtests int
	conformance     int
	failedTests     []string
	skipped         []string
	done, failed    bool
	buildFailed     bool
}

type report struct {
	mu          sync.Mutex
	out         io.Writer
	module      string
	conformance string
	note        string
	pkgs        map[string]*pkgState
	order       []string
	lastPrint   time.Time
	now         func() time.Time
}

func newReport(out io.Writer, module, conformance string, now func() time.Time) *report {
	return &report{out: out, module: module, conformance: conformance, pkgs: map[string]*pkgState{}, now: now, lastPrint: now()}
}

func (r *report) pkg(name string) *pkgState {
	p := r.pkgs[name]
	if p == nil {
		p = &pkgState{started: r.now()}
		r.pkgs[name] = p
		r.order = append(r.order, name)
	}
	return p
}

func (r *report) short(name string) string {
	if s, ok := strings.CutPrefix(name, r.module+"/"); ok {
		return s
	}
	return name
}

func (r *report) printf(format string, args ...any) {
	fmt.Fprintf(r.out, format, args...)
	r.lastPrint = r.now()
}

// line handles one line of input.
func (r *report) line(raw string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var e event
	if !strings.HasPrefix(raw, "{") || json.Unmarshal([]byte(raw), &e) != nil {
		r.printf("%s\n", raw) // not an event: say it as it came
		return
	}
	name := e.Package
	if name == "" {
		name = e.ImportPath
	}
	if name == "" {
		return
	}
	// "pkg [pkg.test]" build paths belong to pkg.
	name, _, _ = strings.Cut(name, " ")
	p := r.pkg(name)
	switch e.Action {
	case "output", "build-output":
		p.output = append(p.output, e.Output)
	case "build-fail":
		p.buildFailed, p.failed = true, true
	case "pass", "fail", "skip":
		if e.Test == "" {
			r.endPackage(name, p, e)
			return
		}
		if strings.Contains(e.Test, "/") {
			p.subtests++
			if e.Action == "pass" && r.conformance == name && isConformance(e.Test) {
				p.conformance++
			}
		} else {
			p.tests++
		}
		switch e.Action {
		case "fail":
			p.failedTests = append(p.failedTests, e.Test)
		case "skip":
			p.skipped = append(p.skipped, e.Test)
		}
	}
}

// isConformance reports whether test is a subtest of a TestXxxConformance.
func isConformance(test string) bool {
	top, _, ok := strings.Cut(test, "/")
	return ok && strings.HasPrefix(top, "Test") && strings.HasSuffix(top, "Conformance")
}

func (r *report) endPackage(name string, p *pkgState, e event) {
	if p.done {
		return
	}
	p.done = true
	elapsed := fmt.Sprintf("%.1fs", e.Elapsed)
	switch {
	case e.Action == "fail" || p.buildFailed:
		p.failed = true
		r.printf("FAIL %-28s %s\n", r.short(name), elapsed)
	case e.Action == "skip" && p.tests == 0:
		// no test files: nothing ran, nothing to say
	default:
		r.printf("ok   %-28s %7s  %d tests, %d subtests\n", r.short(name), elapsed, p.tests, p.subtests)
	}
}

// heartbeat says which packages are running if nothing was printed for
// every.
func (r *report) heartbeat(every time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.now().Sub(r.lastPrint) < every {
		return
	}
	var running []string
	for _, name := range r.order {
		if p := r.pkgs[name]; !p.done {
			running = append(running, fmt.Sprintf("%s (%s)", r.short(name), r.now().Sub(p.started).Round(time.Second)))
		}
	}
	if len(running) == 0 {
		r.printf("    ... building and linking test binaries\n")
		return
	}
	r.printf("    ... still running: %s\n", strings.Join(running, ", "))
}

// finish prints what failed or was skipped and the conformance count, and
// returns the exit code.
func (r *report) finish() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	code := 0
	var failed, skipped []string
	for _, name := range r.order {
		p := r.pkgs[name]
		if p.failed || (!p.done && len(p.output) > 0) {
			failed = append(failed, name)
		}
		for _, s := range p.skipped {
			skipped = append(skipped, r.short(name)+" "+s)
		}
	}
	for _, name := range failed {
		out := r.pkgs[name].output
		if len(out) > 400 {
			out = out[len(out)-400:]
		}
		r.printf("\n--- output of %s ---\n%s", r.short(name), strings.Join(out, ""))
	}
	if len(failed) > 0 {
		r.printf("\nfailed:\n")
		for _, name := range failed {
			p := r.pkgs[name]
			what := strings.Join(p.failedTests, " ")
			if p.buildFailed {
				what = "[build failed]"
			}
			r.printf("  %s %s\n", r.short(name), what)
		}
		code = 1
	}
	if len(skipped) > 0 {
		slices.Sort(skipped)
		r.printf("\nskipped (the suite must run everything):\n  %s\n", strings.Join(skipped, "\n  "))
		code = 1
	}
	if r.conformance != "" {
		n := 0
		if p := r.pkgs[r.conformance]; p != nil {
			n = p.conformance
		}
		r.printf("%s: %d conformance subtests passed%s\n", r.short(r.conformance), n, r.note)
	}
	return code
}

func run(in io.Reader, rep *report, every time.Duration) int {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(every / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				rep.heartbeat(every)
			}
		}
	})
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		rep.line(sc.Text())
	}
	close(stop)
	wg.Wait()
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		return 1
	}
	return rep.finish()
}

func main() {
	module := flag.String("module", "github.com/ferryhq/ferry", "module path, left out of package names")
	conformance := flag.String("conformance", "", "package whose TestXxxConformance subtests are counted")
	note := flag.String("conformance-note", "", "text after the conformance count")
	every := flag.Duration("heartbeat", 30*time.Second, "longest silence before saying what is still running")
	flag.Parse()
	rep := newReport(os.Stdout, *module, *conformance, time.Now)
	rep.note = *note
	os.Exit(run(os.Stdin, rep, *every))
}
