package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// progress shows how long steps advance on stderr. Bars (from
// github.com/schollz/progressbar) are drawn only when stderr is a
// terminal: piped into a file or a CI log, a transfer prints nothing and
// a long command one line per phase, never carriage-return frames.
type progress struct {
	w io.Writer
	// tty: w is a terminal and bars are drawn.
	tty bool
	// lines: outside a terminal, phases are announced one line each.
	lines bool
}

// newProgress returns the progress of cmd on its stderr; quiet turns it
// off.
func newProgress(cmd *cobra.Command, quiet bool) progress {
	w := cmd.ErrOrStderr()
	tty := isTerminal(w)
	return progress{w: w, tty: tty && !quiet, lines: !tty && !quiet}
}

// isTerminal reports whether w is a terminal (golang.org/x/term).
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

// bar returns a progress bar with the options every bar shares; it draws
// nothing unless stderr is a terminal.
func (p progress) bar(max int64, desc string, opts ...progressbar.Option) *progressbar.ProgressBar {
	base := []progressbar.Option{
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetVisibility(p.tty),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100 * time.Millisecond),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionShowElapsedTimeOnFinish(),
	}
	if p.tty {
		// Finish the bar's line, so what follows starts on its own.
		base = append(base, progressbar.OptionOnCompletion(func() { fmt.Fprintln(p.w) }))
	}
	return progressbar.NewOptions64(max, append(base, opts...)...)
}

// transfer returns a bar for moving total bytes: percentage, bytes done
// of total, rate and estimated time left.
func (p progress) transfer(desc string, total int64) *progressbar.ProgressBar {
	return p.bar(total, desc,
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionUseIECUnits(true),
	)
}

// steps returns a bar counting n steps of a phase (announced as one line
// outside a terminal).
func (p progress) steps(desc string, n int) *progressbar.ProgressBar {
	p.linef("%s", desc)
	return p.bar(int64(n), desc, progressbar.OptionShowCount())
}

// phase announces a step whose length is unknown: a spinner with the
// elapsed time on a terminal, one line otherwise. Call the returned func
// when the step is over.
func (p progress) phase(desc string) (done func()) {
	p.linef("%s", desc)
	if !p.tty {
		return func() {}
	}
	sp := progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSpinnerType(14),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionClearOnFinish(),
	)
	_ = sp.RenderBlank()
	return func() { _ = sp.Finish() }
}

// linef writes one line about a phase, outside a terminal only.
func (p progress) linef(format string, args ...any) {
	if p.lines {
		fmt.Fprintf(p.w, format+"\n", args...)
	}
}

// progressClient is the HTTP client of a repository session: it counts
// the bytes of target downloads into a bar, when one is set.
type progressClient struct {
	next *http.Client
	// targets is the URL path under which targets are served.
	targets string

	mu  sync.Mutex
	bar *progressbar.ProgressBar
}

// watch counts target downloads into bar until watch(nil).
func (c *progressClient) watch(bar *progressbar.ProgressBar) {
	c.mu.Lock()
	c.bar = bar
	c.mu.Unlock()
}

func (c *progressClient) Do(r *http.Request) (*http.Response, error) {
	resp, err := c.next.Do(r)
	c.mu.Lock()
	bar := c.bar
	c.mu.Unlock()
	if err != nil || bar == nil || resp.StatusCode != http.StatusOK || !strings.HasPrefix(r.URL.Path, c.targets) {
		return resp, err
	}
	bar.Reset() // a retried download starts again
	resp.Body = &countingBody{ReadCloser: resp.Body, bar: bar}
	return resp, nil
}

type countingBody struct {
	io.ReadCloser
	bar *progressbar.ProgressBar
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	_ = b.bar.Add(n)
	return n, err
}
