// Package browsertest runs a headless Chromium for tests, driven with
// chromedp: Debian's chromium (scripts/test installs it when missing), a
// fresh profile per browser, trust in the test server's certificate alone
// (pinned by its public key), and on failure a screenshot of every open tab
// and the pages' console output and exceptions.
//
// Screenshots of failures go to $FERRY_TEST_ARTIFACTS, or to
// ferry-test-artifacts under the system's temporary directory; the failure
// prints each path.
package browsertest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// DefaultChromium is where Debian's chromium package puts the browser.
const DefaultChromium = "/usr/bin/chromium"

// Chromium returns the browser to run: $FERRY_CHROMIUM, DefaultChromium,
// or chromium on the PATH.
func Chromium() (string, error) { return findChromium(DefaultChromium) }

func findChromium(fallback string) (string, error) {
	if p := os.Getenv("FERRY_CHROMIUM"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("FERRY_CHROMIUM=%s: %w", p, err)
		}
		return p, nil
	}
	if _, err := os.Stat(fallback); err == nil {
		return fallback, nil
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p, nil
	}
	return "", errors.New("chromium is not installed: scripts/test installs Debian's chromium package when it is missing " +
		"(or run: sudo apt-get install -y chromium; FERRY_CHROMIUM names another binary)")
}

// SPKIHash is what Chromium's --ignore-certificate-errors-spki-list takes:
// the base64 SHA-256 of a certificate's public key.
func SPKIHash(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// ArtifactsDir is where failure screenshots go: $FERRY_TEST_ARTIFACTS, or
// ferry-test-artifacts in the temporary directory.
func ArtifactsDir() string {
	if d := os.Getenv("FERRY_TEST_ARTIFACTS"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "ferry-test-artifacts")
}

// Options shape a browser.
type Options struct {
	// Trust are the certificates (the servers' leaves) whose public keys
	// the browser accepts despite not knowing their issuer. Nothing else
	// is accepted that the system does not trust.
	Trust []*x509.Certificate
	// Width and Height of the window; 1280×900 if zero.
	Width, Height int
	// Timeout bounds each Run; 30 s if zero.
	Timeout time.Duration
}

// Browser is a headless Chromium with one tab open, for one test. It is
// closed at the end of the test.
type Browser struct {
	t       testing.TB
	opts    Options
	browser context.Context // the first tab; its cancel closes the browser
	mu      sync.Mutex
	tabs    []*Tab
	output  bytes.Buffer // the browser process's stdout and stderr
}

// Tab is one page of a Browser. Tabs have their own session storage.
type Tab struct {
	b    *Browser
	name string
	ctx  context.Context
	mu   sync.Mutex
	logs []string // console output and exceptions
}

// New starts a browser for t, or fails t (it does not skip) when Chromium
// is missing.
func New(t testing.TB, opts Options) *Browser {
	t.Helper()
	path, err := Chromium()
	if err != nil {
		t.Fatal(err)
	}
	if opts.Width == 0 {
		opts.Width, opts.Height = 1280, 900
	}
	if opts.Timeout == 0 {
		opts.Timeout = 30 * time.Second
	}
	b := &Browser{t: t, opts: opts}
	flags := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(opts.Width, opts.Height),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-features", "Translate,MediaRouter,OptimizationHints"),
		chromedp.Flag("password-store", "basic"),
		chromedp.CombinedOutput(&lockedWriter{mu: &b.mu, w: &b.output}),
	}
	if len(opts.Trust) > 0 {
		var pins []string
		for _, c := range opts.Trust {
			pins = append(pins, SPKIHash(c))
		}
		flags = append(flags, chromedp.Flag("ignore-certificate-errors-spki-list", strings.Join(pins, ",")))
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), flags...)
	ctx, cancel := chromedp.NewContext(alloc, chromedp.WithLogf(func(string, ...any) {}))
	first := &Tab{b: b, name: "tab1", ctx: ctx}
	// Listening starts the browser and opens the tab, on the context that
	// lives as long as the browser (a timeout here would end it).
	if err := first.listen(); err != nil {
		cancel()
		cancelAlloc()
		b.mu.Lock()
		out := b.output.String()
		b.mu.Unlock()
		t.Fatalf("start %s: %v\n%s", path, err, out)
	}
	b.browser = ctx
	b.tabs = []*Tab{first}
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// Runs before the browser closes (cleanups run last first).
	t.Cleanup(b.onFailure)
	return b
}

// Tab returns the browser's first tab.
func (b *Browser) Tab() *Tab { return b.tabs[0] }

// NewTab opens another tab, with its own session storage.
func (b *Browser) NewTab() *Tab {
	b.t.Helper()
	ctx, cancel := chromedp.NewContext(b.browser)
	b.mu.Lock()
	tab := &Tab{b: b, name: fmt.Sprintf("tab%d", len(b.tabs)+1), ctx: ctx}
	b.tabs = append(b.tabs, tab)
	b.mu.Unlock()
	if err := tab.listen(); err != nil {
		b.t.Fatalf("open a tab: %v", err)
	}
	b.t.Cleanup(cancel)
	return tab
}

// listen opens the tab if it is not yet, and keeps its console output and
// exceptions.
func (tab *Tab) listen() error {
	return chromedp.Listen(tab.ctx, func(ev any) {
		var line string
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			var args []string
			for _, a := range ev.Args {
				if len(a.Value) > 0 {
					args = append(args, string(a.Value))
				} else {
					args = append(args, a.Description)
				}
			}
			line = fmt.Sprintf("console.%s: %s", ev.Type, strings.Join(args, " "))
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			line = fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber+1, d.Text)
			if d.Exception != nil {
				line += " " + d.Exception.Description
			}
		default:
			return
		}
		tab.mu.Lock()
		tab.logs = append(tab.logs, line)
		tab.mu.Unlock()
	})
}

// Do runs steps in the tab within the browser's timeout, and fails the
// test (with a screenshot) if one fails.
func (tab *Tab) Do(steps ...chromedp.Action[chromedp.Void]) {
	tab.b.t.Helper()
	if err := tab.Try(steps...); err != nil {
		tab.b.t.Fatalf("%s: %v (each run has %s)", tab.name, err, tab.b.opts.Timeout)
	}
}

// Try is Do returning the error instead of failing the test.
func (tab *Tab) Try(steps ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(tab.ctx, tab.b.opts.Timeout)
	defer cancel()
	return chromedp.Do(ctx, steps...)
}

// Get runs an action that returns a value in tab, within the browser's
// timeout, and fails the test if it fails.
func Get[T any](tab *Tab, a chromedp.Action[T]) T {
	tab.b.t.Helper()
	ctx, cancel := context.WithTimeout(tab.ctx, tab.b.opts.Timeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		tab.b.t.Fatalf("%s: %v", tab.name, err)
	}
	return v
}

// Context is the tab's context, for chromedp calls of the caller's own.
func (tab *Tab) Context() context.Context { return tab.ctx }

// Logs returns what the tab's pages printed on the console, and their
// uncaught exceptions.
func (tab *Tab) Logs() []string {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	return append([]string(nil), tab.logs...)
}

// Screenshot writes a PNG of the tab's whole page to path.
func (tab *Tab) Screenshot(path string) error {
	ctx, cancel := context.WithTimeout(tab.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		return fmt.Errorf("screenshot: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, png, 0o644)
}

// onFailure leaves, for a failed test, a screenshot of each tab, and
// prints where, with the pages' console output.
func (b *Browser) onFailure() {
	if !b.t.Failed() {
		return
	}
	dir := ArtifactsDir()
	name := unsafeChars.ReplaceAllString(b.t.Name(), "_")
	stamp := time.Now().UTC().Format("20060102T150405")
	b.mu.Lock()
	tabs := append([]*Tab(nil), b.tabs...)
	b.mu.Unlock()
	for _, tab := range tabs {
		path := filepath.Join(dir, fmt.Sprintf("%s-%s-%s.png", name, stamp, tab.name))
		if err := tab.Screenshot(path); err != nil {
			b.t.Logf("%s: no screenshot: %v", tab.name, err)
		} else {
			b.t.Logf("%s: screenshot of the failure: %s", tab.name, path)
		}
		ctx, cancel := context.WithTimeout(tab.ctx, 2*time.Second)
		url, _ := chromedp.Run(ctx, chromedp.Location())
		cancel()
		logs := tab.Logs()
		if len(logs) == 0 {
			logs = []string{"(nothing)"}
		}
		b.t.Logf("%s: at %s; console:\n  %s", tab.name, url, strings.Join(logs, "\n  "))
	}
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// lockedWriter is an io.Writer safe for the browser's output goroutine.
type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w.Len() > 1<<20 {
		return len(p), nil // enough to tell what went wrong
	}
	return l.w.Write(p)
}

// UpdateScreenshots reports whether the run is asked to write the
// documentation's screenshots (FERRY_UPDATE_SCREENSHOTS=1).
func UpdateScreenshots() bool { return os.Getenv("FERRY_UPDATE_SCREENSHOTS") == "1" }

// DocsDir is where the console's documentation keeps its screenshots:
// docs/console in the module that holds the working directory.
func DocsDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "docs", "console"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// DocScreenshot writes a PNG of the tab's page to DocsDir()/name.png when
// UpdateScreenshots says so, and returns the path it wrote ("" if none).
func DocScreenshot(tab *Tab, name string) (string, error) {
	if !UpdateScreenshots() {
		return "", nil
	}
	dir, err := DocsDir()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, name+".png")
	return path, tab.Screenshot(path)
}
