package browsertest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// page is what the test servers serve: a page whose script logs, and
// keeps a value in session storage.
var page = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/":
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!doctype html><title>harness</title><p id="msg">waiting</p><script src="/app.js"></script>`)
	case "/app.js":
		w.Header().Set("Content-Type", "text/javascript")
		fmt.Fprint(w, `document.getElementById("msg").textContent = "ran";
console.log("hello from the page");
if (!sessionStorage.getItem("tab")) sessionStorage.setItem("tab", String(Math.random()));`)
	default:
		http.NotFound(w, r)
	}
})

// tlsServer serves page over TLS with a new self-signed certificate for
// 127.0.0.1, and returns it with that certificate.
func tlsServer(t *testing.T) (*httptest.Server, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "browsertest"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(page)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, cert
}

// TestBrowser checks the harness in a real Chromium: a page from a server
// whose certificate is pinned loads and runs its script, its console output
// is kept, tabs have their own session storage, a server whose
// certificate is not pinned is refused, and screenshots are PNGs.
func TestBrowser(t *testing.T) {
	trusted, cert := tlsServer(t)
	untrusted, _ := tlsServer(t)
	b := New(t, Options{Trust: []*x509.Certificate{cert}})
	tab := b.Tab()
	tab.Do(chromedp.Navigate(trusted.URL), chromedp.WaitVisible(chromedp.CSS("#msg")))
	if got := Get(tab, chromedp.Poll[string](`document.getElementById("msg").textContent === "ran" && "ran"`)); got != "ran" {
		t.Errorf("the page's script: %q", got)
	}
	first := Get(tab, chromedp.Evaluate[string](`sessionStorage.getItem("tab")`))
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Contains(tab.Logs(), `console.log: "hello from the page"`) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !slices.Contains(tab.Logs(), `console.log: "hello from the page"`) {
		t.Errorf("console output %q", tab.Logs())
	}

	other := b.NewTab()
	other.Do(chromedp.Navigate(trusted.URL), chromedp.WaitVisible(chromedp.CSS("#msg")))
	second := Get(other, chromedp.Poll[string](`sessionStorage.getItem("tab")`))
	if first == "" || second == first {
		t.Errorf("session storage of the tabs: %q and %q, want two different values", first, second)
	}

	if err := other.Try(chromedp.Navigate(untrusted.URL)); err == nil || !strings.Contains(err.Error(), "CERT") {
		t.Errorf("a server with a certificate not pinned: %v, want a certificate error", err)
	}

	path := filepath.Join(t.TempDir(), "shot.png")
	if err := tab.Screenshot(path); err != nil {
		t.Fatal(err)
	}
	if png, err := os.ReadFile(path); err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("screenshot %s: %d bytes, %v", path, len(png), err)
	}
}

// failed is a test that has failed, for onFailure.
type failed struct {
	testing.TB
	logs []string
}

func (f *failed) Failed() bool { return true }
func (f *failed) Logf(format string, args ...any) {
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}

// TestScreenshotOnFailure checks that a failed test leaves a screenshot of
// each tab where ArtifactsDir says, and prints its path and the console.
func TestScreenshotOnFailure(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("FERRY_TEST_ARTIFACTS", dir)
	srv, cert := tlsServer(t)
	f := &failed{TB: t}
	b := New(f, Options{Trust: []*x509.Certificate{cert}})
	b.Tab().Do(chromedp.Navigate(srv.URL), chromedp.WaitVisible(chromedp.CSS("#msg")))
	b.onFailure()
	shots, _ := filepath.Glob(filepath.Join(dir, "*.png"))
	if len(shots) != 1 {
		t.Fatalf("screenshots %q, want one", shots)
	}
	if !strings.Contains(strings.Join(f.logs, "\n"), shots[0]) || !strings.Contains(strings.Join(f.logs, "\n"), srv.URL) {
		t.Errorf("the failure says %q, want the screenshot's path and the page", f.logs)
	}
}

// TestChromiumMissing checks that a missing browser is an error that says
// how to get it, not a skip.
func TestChromiumMissing(t *testing.T) {
	t.Setenv("FERRY_CHROMIUM", filepath.Join(t.TempDir(), "no-chromium"))
	_, err := Chromium()
	if err == nil || !strings.Contains(err.Error(), "FERRY_CHROMIUM") {
		t.Errorf("Chromium() = %v, want an error about FERRY_CHROMIUM", err)
	}
	t.Setenv("FERRY_CHROMIUM", "")
	t.Setenv("PATH", t.TempDir())
	if _, err := findChromium(filepath.Join(t.TempDir(), "chromium")); err == nil || !strings.Contains(err.Error(), "scripts/test installs") {
		t.Errorf("no chromium anywhere: %v, want an error saying scripts/test installs it", err)
	}
}

// TestDocScreenshot checks that documentation screenshots are written only
// when asked, into docs/console of this module.
func TestDocScreenshot(t *testing.T) {
	dir, err := DocsDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "console.md")); err != nil || filepath.Base(dir) != "console" {
		t.Errorf("DocsDir() = %s, want docs/console beside docs/console.md (%v)", dir, err)
	}
	srv, cert := tlsServer(t)
	b := New(t, Options{Trust: []*x509.Certificate{cert}})
	b.Tab().Do(chromedp.Navigate(srv.URL), chromedp.WaitVisible(chromedp.CSS("#msg")))
	t.Setenv("FERRY_UPDATE_SCREENSHOTS", "")
	if path, err := DocScreenshot(b.Tab(), "never-written"); path != "" || err != nil {
		t.Errorf("without FERRY_UPDATE_SCREENSHOTS: wrote %q, %v", path, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "never-written.png")); err == nil {
		t.Error("a screenshot was written without FERRY_UPDATE_SCREENSHOTS")
	}
}
