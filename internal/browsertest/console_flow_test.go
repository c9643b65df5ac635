package browsertest_test

import (
	"crypto/x509"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/chromedp"

	"github.com/ferryhq/ferry/console"
	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/browsertest"
	"github.com/ferryhq/ferry/internal/ferrytest"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/server"
	"github.com/ferryhq/ferry/tuf"
)

// sel selects the console's element with data-testid id (the test ids are
// listed in console/README.md).
func sel(id string) chromedp.CSS { return chromedp.CSS(fmt.Sprintf(`[data-testid=%q]`, id)) }

// jsEl is a script expression for the element with data-testid id, or
// null.
func jsEl(id string) string { return fmt.Sprintf(`document.querySelector('[data-testid=%q]')`, id) }

// waitFor evaluates the script expression js (a string) until ok accepts
// its value, and returns it; it fails the test after 30 s.
func waitFor(t *testing.T, tab *browsertest.Tab, js, what string, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := chromedp.Run(tab.Context(), chromedp.Evaluate[string](`String((() => { try { return `+js+` } catch (e) { return "" } })() ?? "")`))
		got = strings.TrimSpace(got)
		if err == nil && ok(got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: got %q (%v)", what, got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// text waits until the text of the element with data-testid id satisfies ok.
func text(t *testing.T, tab *browsertest.Tab, id, what string, ok func(string) bool) string {
	t.Helper()
	return waitFor(t, tab, jsEl(id)+`.textContent`, what, ok)
}

// dataValue waits until the element with data-testid id carries want in
// its data-value.
func dataValue(t *testing.T, tab *browsertest.Tab, id string, want uint64) {
	t.Helper()
	w := strconv.FormatUint(want, 10)
	waitFor(t, tab, jsEl(id)+`.dataset.value`, id+" (GetFleetSummary says "+w+")", func(s string) bool { return s == w })
}

func is(want string) func(string) bool { return func(s string) bool { return s == want } }

func count(tab *browsertest.Tab, ids ...string) int {
	var q []string
	for _, id := range ids {
		q = append(q, fmt.Sprintf(`[data-testid=%q]`, id))
	}
	return browsertest.Get(tab, chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll(%q).length`, strings.Join(q, ","))))
}

func shot(t *testing.T, tab *browsertest.Tab, name string) {
	t.Helper()
	if path, err := browsertest.DocScreenshot(tab, name); err != nil {
		t.Errorf("screenshot %s: %v", name, err)
	} else if path != "" {
		t.Logf("wrote %s", path)
	}
}

// signIn opens the console, signs in with key and waits for the
// operator's name and role in the header.
func signIn(t *testing.T, tab *browsertest.Tab, f *ferrytest.Ferryd, key, who string) {
	t.Helper()
	tab.Do(chromedp.Navigate(f.APIURL()+"/"), chromedp.WaitVisible(sel("signin-key")),
		chromedp.SendKeys(sel("signin-key"), key), chromedp.Click(sel("signin-submit")))
	text(t, tab, "whoami", "the operator after sign-in", is(who))
}

// TestConsole runs the console in a browser against a ferryd with
// simulated devices: sign in, the fleet's numbers against GetFleetSummary,
// a device's verified report with its chain and statement, a rollout
// created in the form, watched live through its waves, paused and resumed;
// and a viewer who sees no write controls and whose forced write is
// refused with permission_denied.
func TestConsole(t *testing.T) {
	var viewerKey string
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) {
		cfg.Console = console.Handler()
		viewerKey = ferrytest.AddOperator(t, cfg, "vera", credentials.RoleViewer)
	})
	w := newWorld(t, f)
	v1 := w.add(t, "gateway", "1.0.0", 8<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}, ReleaseNotes: "first release"})
	v2 := w.add(t, "gateway", "2.0.0", 8<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}, ReleaseNotes: "faster boot"})
	fl := w.startFleet(t, "gw-", "web", 6, 0)
	w.update(t, "web", fl.IDs, v1)

	b := browsertest.New(t, browsertest.Options{Trust: []*x509.Certificate{serverCert(t, f)}})
	tab := b.Tab()
	signIn(t, tab, f, f.OperatorToken(t), "dev-admin (admin)")

	// The fleet page's numbers are GetFleetSummary's.
	sum, err := w.fleet.GetFleetSummary(t.Context(), connect.NewRequest(&fleetv1.GetFleetSummaryRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	s := sum.Msg
	dataValue(t, tab, "fleet-total", s.GetTotalDevices())
	dataValue(t, tab, "fleet-silent", s.GetSilentDevices())
	dataValue(t, tab, "fleet-recent", s.GetTotalDevices()-s.GetSilentDevices())
	for status, n := range s.GetDevicesPerStatus() {
		dataValue(t, tab, "fleet-status-"+status, n)
	}
	for bundle, n := range s.GetDevicesPerBundle() {
		want := strconv.FormatUint(n, 10)
		waitFor(t, tab, fmt.Sprintf(`document.querySelector('[data-testid="fleet-bundle"][data-bundle=%q]').dataset.value`, bundle),
			"devices on "+bundle, is(want))
	}
	if s.GetDevicesPerBundle()[v1.GetTargetPath()] != uint64(len(fl.IDs)) {
		t.Errorf("GetFleetSummary: %v on %s, want the %d simulated devices", s.GetDevicesPerBundle(), v1.GetTargetPath(), len(fl.IDs))
	}
	waitFor(t, tab, jsEl("fleet-live")+`.dataset.live`, "the fleet page watching", is("true"))

	// The device list, and a device's page from it with its verified report.
	tab.Do(chromedp.Click(sel("nav-devices")), chromedp.WaitVisible(sel("devices-table")))
	if n := count(tab, "device-row"); n != int(s.GetTotalDevices()) {
		t.Errorf("device list: %d rows, want %d", n, s.GetTotalDevices())
	}
	shot(t, tab, "devices")
	dev := fl.IDs[0]
	tab.Do(chromedp.Click(chromedp.CSS(fmt.Sprintf(`[data-testid="device-row"][data-device-id=%q] a`, dev))))
	waitFor(t, tab, jsEl("device-page")+`.dataset.deviceId`, "the device's page", is(dev))
	waitFor(t, tab, jsEl("attestation-verified")+`.dataset.verified`, "the report verified", is("true"))
	text(t, tab, "attestation-verified", "the verdict", is("verified"))
	att, err := w.fleet.GetAttestation(t.Context(), connect.NewRequest(&fleetv1.GetAttestationRequest{
		DeviceId: dev, JobId: browsertest.Get(tab, chromedp.Evaluate[string](jsEl("attestation-job")+`.value`)),
	}))
	if err != nil {
		t.Fatalf("GetAttestation: %v", err)
	}
	if !att.Msg.GetVerified() || len(att.Msg.GetCertificates()) == 0 {
		t.Fatalf("GetAttestation: verified %v, %d certificates", att.Msg.GetVerified(), len(att.Msg.GetCertificates()))
	}
	if n := count(tab, "attestation-cert"); n != len(att.Msg.GetCertificates()) {
		t.Errorf("certificate chain: %d shown, the API has %d", n, len(att.Msg.GetCertificates()))
	}
	leaf := att.Msg.GetCertificates()[0]
	text(t, tab, "attestation-chain", "the leaf certificate", func(s string) bool {
		return strings.Contains(s, leaf.GetSha256Fingerprint()) && strings.Contains(s, "spiffe://")
	})
	text(t, tab, "attestation-statement", "the in-toto statement", func(s string) bool {
		return strings.Contains(s, "https://in-toto.io/Statement/v1") && strings.Contains(s, dev)
	})
	text(t, tab, "device-job-status", "the device's job", is("SUCCEEDED"))
	if n := count(tab, "timeline-event"); n == 0 {
		t.Error("the job history shows no event")
	}
	shot(t, tab, "device")

	// The fleet page in another tab, open while the rollout goes on.
	ft := b.NewTab()
	signIn(t, ft, f, f.OperatorToken(t), "dev-admin (admin)")
	waitFor(t, ft, jsEl("fleet-live")+`.dataset.live`, "the fleet page watching", is("true"))

	// Create a rollout in the form: three waves with a soak.
	tab.Do(chromedp.Click(sel("nav-rollouts")), chromedp.WaitVisible(sel("rollout-new")), chromedp.Click(sel("rollout-new")),
		chromedp.WaitVisible(sel("rollout-create-bundle")),
		chromedp.SendKeys(sel("rollout-create-name"), "gateway 2.0.0"),
		chromedp.SetValue(sel("rollout-create-bundle"), v2.GetTargetPath()),
		chromedp.SendKeys(sel("rollout-create-selector"), "fleet=web"),
		chromedp.SendKeys(sel("rollout-create-waves"), "20,50,100"),
		chromedp.SendKeys(sel("rollout-create-soak"), "3s"), // time to pause between waves
		chromedp.SetValue(sel("rollout-create-abort-status"), "FAILED"),
		chromedp.SendKeys(sel("rollout-create-abort-percent"), "50"),
		chromedp.SendKeys(sel("rollout-create-abort-min"), "2"))
	shot(t, tab, "rollout-new")
	tab.Do(chromedp.Click(sel("rollout-create-submit")))
	id := waitFor(t, tab, jsEl("rollout-page")+`.dataset.rolloutId`, "the new rollout's page", func(s string) bool { return s != "" })
	// Nothing below reloads the page: what changes arrives by WatchRollout.
	tab.Do(chromedp.Evaluate[chromedp.Void](`window.ferryNotReloaded = true`))
	waitFor(t, tab, jsEl("rollout-live")+`.dataset.live`, "the rollout page watching", is("true"))
	text(t, tab, "rollout-target-count", "devices targeted", is(strconv.Itoa(len(fl.IDs))))
	text(t, tab, "rollout-abort-rules", "the abort rule", func(s string) bool { return strings.Contains(s, "FAILED ≥ 50%") })
	text(t, tab, "rollout-soak", "the soak", func(s string) bool { return strings.Contains(s, "3s") })
	text(t, tab, "wave-state-0", "the first wave done", is("DONE"))
	tab.Do(chromedp.Click(sel("rollout-pause")))
	text(t, tab, "rollout-state", "the rollout paused", is("PAUSED"))
	waitFor(t, tab, jsEl("rollout-resume")+` !== null`, "the resume button", is("true"))
	// The executions follow the counts.
	waitFor(t, tab, `String(document.querySelectorAll('[data-testid="execution-row"][data-status="SUCCEEDED"]').length === Number(`+
		jsEl("rollout-count-SUCCEEDED")+`.dataset.value))`, "the executions as the counts say", is("true"))
	shot(t, tab, "rollout")

	// A viewer in another tab: the paused rollout with no write controls,
	// and no way to create one.
	vt := b.NewTab()
	signIn(t, vt, f, viewerKey, "vera (viewer)")
	vt.Do(chromedp.Navigate(f.APIURL() + "/#/rollouts/" + id))
	text(t, vt, "rollout-state", "the viewer sees the rollout", is("PAUSED"))
	if n := count(vt, "rollout-pause", "rollout-resume", "rollout-cancel", "rollout-cancel-rollback"); n != 0 {
		t.Errorf("a viewer sees %d write controls on a paused rollout", n)
	}

	// Resumed by the operator, the rollout completes on both pages, live.
	tab.Do(chromedp.Click(sel("rollout-resume")))
	text(t, tab, "rollout-state", "the rollout completed", is("COMPLETED"))
	for i := range 3 {
		text(t, tab, fmt.Sprintf("wave-state-%d", i), fmt.Sprintf("wave %d", i+1), is("DONE"))
	}
	waitFor(t, tab, jsEl("rollout-count-SUCCEEDED")+`.dataset.value`, "devices succeeded", is(strconv.Itoa(len(fl.IDs))))
	waitFor(t, tab, `document.querySelectorAll('[data-testid="execution-row"][data-status="SUCCEEDED"]').length`, "executions succeeded",
		is(strconv.Itoa(len(fl.IDs))))
	waitFor(t, tab, `window.ferryNotReloaded`, "the rollout page not reloaded", is("true"))
	text(t, vt, "rollout-state", "the viewer sees the rollout complete", is("COMPLETED"))

	// The fleet page followed the devices as they changed (WatchDevices).
	waitFor(t, ft, fmt.Sprintf(`document.querySelector('[data-testid="fleet-bundle"][data-bundle=%q]').dataset.value`, v2.GetTargetPath()),
		"the fleet page's devices on "+v2.GetTargetPath(), is(strconv.Itoa(len(fl.IDs))))
	waitFor(t, ft, `String(document.querySelectorAll('[data-testid="fleet-change"]').length > 0)`, "the fleet page's latest changes", is("true"))
	sum, err = w.fleet.GetFleetSummary(t.Context(), connect.NewRequest(&fleetv1.GetFleetSummaryRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	dataValue(t, ft, "fleet-total", sum.Msg.GetTotalDevices())
	dataValue(t, ft, "fleet-status-SUCCEEDED", sum.Msg.GetDevicesPerStatus()["SUCCEEDED"])
	shot(t, ft, "fleet")

	vt.Do(chromedp.Click(sel("nav-rollouts")), chromedp.WaitVisible(sel("rollouts-table")))
	waitFor(t, vt, fmt.Sprintf(`document.querySelector('[data-testid="rollout-row"][data-rollout-id=%q]').dataset.state`, id),
		"the rollout in the viewer's list", is("COMPLETED"))
	if n := count(vt, "rollout-new"); n != 0 {
		t.Error("a viewer sees the new-rollout link")
	}

	// The viewer forces a write: the form opened by hand, and a call from
	// the page's script; ferryd refuses both, and the console says so.
	vt.Do(chromedp.Navigate(f.APIURL()+"/#/rollouts/new"), chromedp.WaitVisible(sel("rollout-create-bundle")),
		chromedp.SetValue(sel("rollout-create-bundle"), v2.GetTargetPath()),
		chromedp.SendKeys(sel("rollout-create-selector"), "fleet=web"),
		chromedp.Click(sel("rollout-create-submit")))
	text(t, vt, "rollout-create-error", "the viewer's forced CreateRollout", func(s string) bool { return strings.HasPrefix(s, "permission_denied: ") })
	shot(t, vt, "viewer-refused")
	if got := eval(vt, call("/ferry.fleet.v1.RolloutService/PauseRollout", viewerKey, fmt.Sprintf(`{"rolloutId": %q}`, id))); got != "403 permission_denied" {
		t.Errorf("a viewer's forced PauseRollout: %s", got)
	}
	list, err := w.rollouts.ListRollouts(t.Context(), connect.NewRequest(&fleetv1.ListRolloutsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.Msg.GetRollouts()); n != 1 {
		t.Errorf("%d rollouts after the viewer's attempt, want the operator's one", n)
	}

	// The bundles page: the signed metadata and the TUF roles.
	tab.Do(chromedp.Click(sel("nav-bundles")), chromedp.WaitVisible(sel("bundles-table")))
	text(t, tab, "bundles-table", "the bundles", func(s string) bool {
		return strings.Contains(s, v2.GetTargetPath()) && strings.Contains(s, "faster boot") && strings.Contains(s, "gw-a")
	})
	for _, role := range []string{"root", "targets", "snapshot", "timestamp"} {
		waitFor(t, tab, fmt.Sprintf(`document.querySelector('[data-testid="role-row"][data-role=%q]') !== null`, role), "TUF role "+role, is("true"))
	}
	shot(t, tab, "bundles")
}
