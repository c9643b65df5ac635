package browsertest_test

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/chromedp/chromedp"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/browsertest"
	"github.com/ferryhq/ferry/internal/ferrytest"
	"github.com/ferryhq/ferry/server"
)

// serverCert returns the leaf of f's serving certificate.
func serverCert(t *testing.T, f *ferrytest.Ferryd) *x509.Certificate {
	t.Helper()
	raw, err := os.ReadFile(f.Dev.ServerCert)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		t.Fatalf("%s: no PEM", f.Dev.ServerCert)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// probeConsole is a page that tries what the console's policy forbids (an
// inline script) beside what it allows (its own module), and records the
// browser's refusals.
var probeConsole = http.FileServerFS(fstest.MapFS{
	"index.html": {Data: []byte(`<!doctype html><title>probe</title>
<script type="module" src="probe.js"></script>
<script>window.inlineRan = true;</script>
<p id="state">loading</p>`)},
	"probe.js": {Data: []byte(`document.getElementById("state").textContent = "loaded";`)},
})

// call is a script that calls ferryd's API from the page with fetch, as
// the console does, and returns "status code" or the fetch error.
func call(procedure, key, body string) string {
	auth := ""
	if key != "" {
		auth = fmt.Sprintf(`"Authorization": "Bearer %s",`, key)
	}
	return fmt.Sprintf(`fetch(%q, {method: "POST", headers: {%s "Content-Type": "application/json"}, body: %q})
  .then(async r => r.status + " " + ((await r.json()).code || "ok"))
  .catch(e => "failed: " + e.name)`, procedure, auth, body)
}

func eval(tab *browsertest.Tab, script string) string {
	return browsertest.Get(tab, chromedp.Evaluate[string](script, chromedp.EvalAwaitPromise))
}

// TestConsolePolicyInBrowser checks the console's security headers where
// they matter, in a real browser on a page ferryd serves: the page's own
// script runs and an inline one does not; API calls from the page need a
// credential and the role, as from anywhere; a page of another origin
// cannot read API answers even with a valid key.
func TestConsolePolicyInBrowser(t *testing.T) {
	var viewerKey string
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) {
		cfg.Console = probeConsole
		viewerKey = ferrytest.AddOperator(t, cfg, "viewer", credentials.RoleViewer)
	})
	key := f.OperatorToken(t)
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<!doctype html><title>another site</title><p id="state">loaded</p>`)
	}))
	t.Cleanup(other.Close)
	b := browsertest.New(t, browsertest.Options{Trust: []*x509.Certificate{serverCert(t, f), other.Certificate()}})
	tab := b.Tab()
	tab.Do(chromedp.Navigate(f.APIURL()+"/"), chromedp.WaitVisible(chromedp.CSS("#state")))
	if got := browsertest.Get(tab, chromedp.Poll[string](`document.getElementById("state").textContent === "loaded" && "loaded"`)); got != "loaded" {
		t.Errorf("the console's own script did not run: %q", got)
	}
	if ran := eval(tab, `String(window.inlineRan === true)`); ran != "false" {
		t.Error("an inline script ran on a console page")
	}

	for _, tc := range []struct {
		name, procedure, key, body, want string
	}{
		{"who the operator is", "/ferry.fleet.v1.OperatorService/WhoAmI", key, "{}", "200 ok"},
		{"no credential", "/ferry.fleet.v1.FleetService/GetFleetSummary", "", "{}", "401 unauthenticated"},
		{"a key that is not valid", "/ferry.fleet.v1.FleetService/GetFleetSummary", "nope", "{}", "401 unauthenticated"},
		{"a viewer reads", "/ferry.fleet.v1.FleetService/GetFleetSummary", viewerKey, "{}", "200 ok"},
		{"a viewer forces a write", "/ferry.fleet.v1.RolloutService/CreateRollout", viewerKey,
			`{"selector": "group=dev", "bundle": {"targetPath": "gw/fw.bin"}}`, "403 permission_denied"},
	} {
		if got := eval(tab, call(tc.procedure, tc.key, tc.body)); got != tc.want {
			t.Errorf("%s: %s from the console's page, want %s", tc.name, got, tc.want)
		}
	}

	// Another origin's page, with a valid key: the browser does not let
	// it read the answer (ferryd sends no CORS headers).
	tab.Do(chromedp.Navigate(other.URL), chromedp.WaitVisible(chromedp.CSS("#state")))
	if got := eval(tab, call(f.APIURL()+"/ferry.fleet.v1.FleetService/GetFleetSummary", key, "{}")); !strings.HasPrefix(got, "failed") {
		t.Errorf("API call from another origin's page: %s, want it refused", got)
	}
}
