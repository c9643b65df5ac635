package server_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/proto/ferry/repository/v1/repositoryv1connect"
	"github.com/ferryhq/ferry/server"
)

// testConsole stands in for the embedded console: what matters here is how
// ferryd serves assets, not what they are.
var testConsole = http.FileServerFS(fstest.MapFS{
	"index.html": {Data: []byte(`<!doctype html><title>Ferry</title><script type="module" src="app.js"></script>`)},
	"app.js":     {Data: []byte(`export {};`)},
})

// startConsole starts a ferryd serving testConsole, with a viewer key
// beside the development admin's.
func startConsole(t *testing.T) (f *ferrytest.Ferryd, viewerKey string) {
	t.Helper()
	f = ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) {
		cfg.Console = testConsole
		viewerKey = ferrytest.AddOperator(t, cfg, "alice", credentials.RoleViewer)
	})
	return f, viewerKey
}

// do sends a request to f's API port with headers (name, value, ...) and
// returns the answer with its body read.
func do(t *testing.T, f *ferrytest.Ferryd, method, path, body string, headers ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.APIURL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	client := f.HTTPClient(t)
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp, string(raw)
}

// TestConsoleHeaders checks what the console's assets and the API's
// answers carry: the console's strict policy, no caching of API answers,
// and that the console is public while everything else stays as it was.
func TestConsoleHeaders(t *testing.T) {
	f, _ := startConsole(t)
	key := "Bearer " + f.OperatorToken(t)
	common := map[string]string{"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
	console := map[string]string{
		"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
			"frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
		"X-Frame-Options": "DENY", "Cross-Origin-Opener-Policy": "same-origin",
	}
	api := map[string]string{"Cache-Control": "no-store"}
	for _, tc := range []struct {
		name, method, path, body string
		headers                  []string
		status                   int
		want                     []map[string]string
		absent                   []string // headers that must not be set
		contains                 string   // in the body
	}{
		{name: "the page, without a credential", method: "GET", path: "/", status: 200,
			want: []map[string]string{common, console}, contains: `src="app.js"`},
		{name: "a script", method: "GET", path: "/app.js", status: 200, want: []map[string]string{common, console, {"Content-Type": "text/javascript; charset=utf-8"}}},
		{name: "HEAD of the page", method: "HEAD", path: "/", status: 200, want: []map[string]string{common, console}},
		{name: "a missing asset", method: "GET", path: "/missing.js", status: 404, want: []map[string]string{common, console}},
		{name: "POST to the page", method: "POST", path: "/", body: "{}", status: 404, want: []map[string]string{common}},
		{name: "an API call", method: "POST", path: fleetv1connect.FleetServiceGetFleetSummaryProcedure, body: "{}",
			headers: []string{"Content-Type", "application/json", "Authorization", key}, status: 200,
			want: []map[string]string{common, api}, absent: []string{"Content-Security-Policy"}, contains: "total"},
		{name: "an API call with GET", method: "GET", path: fleetv1connect.FleetServiceGetFleetSummaryProcedure + "?encoding=json&message=%7B%7D",
			headers: []string{"Authorization", key}, status: 200, want: []map[string]string{common, api}, contains: "total"},
		{name: "an API call without a credential", method: "POST", path: fleetv1connect.FleetServiceGetFleetSummaryProcedure, body: "{}",
			headers: []string{"Content-Type", "application/json"}, status: 401, want: []map[string]string{common, api}, contains: "unauthenticated"},
		{name: "an unknown procedure", method: "POST", path: "/ferry.fleet.v1.FleetService/Nothing", body: "{}",
			headers: []string{"Content-Type", "application/json", "Authorization", key}, status: 404, want: []map[string]string{common, api},
			absent: []string{"Content-Security-Policy"}},
		{name: "an unknown procedure with GET", method: "GET", path: "/ferry.fleet.v1.FleetService/Nothing",
			headers: []string{"Authorization", key}, status: 404, want: []map[string]string{common, api}, absent: []string{"Content-Security-Policy"}},
		{name: "an API call from another site's page", method: "POST", path: fleetv1connect.FleetServiceGetFleetSummaryProcedure, body: "{}",
			headers: []string{"Content-Type", "application/json", "Authorization", key, "Sec-Fetch-Site", "cross-site"}, status: 403,
			want: []map[string]string{common, api}, contains: "permission_denied"},
		{name: "an API call from a sibling site's page", method: "GET", path: fleetv1connect.FleetServiceGetFleetSummaryProcedure + "?encoding=json&message=%7B%7D",
			headers: []string{"Authorization", key, "Sec-Fetch-Site", "same-site"}, status: 403, want: []map[string]string{common, api}},
		{name: "an API call from the console's page", method: "POST", path: fleetv1connect.FleetServiceGetFleetSummaryProcedure, body: "{}",
			headers: []string{"Content-Type", "application/json", "Authorization", key, "Sec-Fetch-Site", "same-origin"}, status: 200,
			want: []map[string]string{common, api}},
		{name: "health stays anonymous", method: "GET", path: server.LivenessPath, status: 200, want: []map[string]string{common}},
		{name: "metrics still need a credential", method: "GET", path: "/metrics", status: 401, want: []map[string]string{common}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, f, tc.method, tc.path, tc.body, tc.headers...)
			if resp.StatusCode != tc.status {
				t.Fatalf("%s %s: %s, want %d: %s", tc.method, tc.path, resp.Status, tc.status, body)
			}
			for _, want := range tc.want {
				for k, v := range want {
					if got := resp.Header.Get(k); got != v {
						t.Errorf("%s: %q, want %q", k, got, v)
					}
				}
			}
			for _, k := range tc.absent {
				if got := resp.Header.Get(k); got != "" {
					t.Errorf("%s: %q, want none", k, got)
				}
			}
			if !strings.Contains(body, tc.contains) {
				t.Errorf("body %q, want it to contain %q", body, tc.contains)
			}
		})
	}
	// The two calls from other sites' pages are counted.
	if _, metrics := do(t, f, "GET", "/metrics", "", "Authorization", key); !strings.Contains(metrics, `ferry_api_requests_refused_total{reason="cross_site"} 2`) {
		t.Error("the refused cross-site calls are not counted in ferry_api_requests_refused_total")
	}
}

// TestConsoleKeepsAPIAuthentication calls every operator procedure the
// API port serves, the way a page would (JSON, from the console's origin,
// with a cookie), without a credential and with a viewer's: none answers
// without one, and a viewer is refused what needs more. The path tricks a
// page could try are not served either.
func TestConsoleKeepsAPIAuthentication(t *testing.T) {
	f, viewerKey := startConsole(t)
	files := []protoreflect.FileDescriptor{
		fleetv1.File_ferry_fleet_v1_fleet_proto, fleetv1.File_ferry_fleet_v1_audit_proto, fleetv1.File_ferry_fleet_v1_operator_proto,
		repositoryv1.File_ferry_repository_v1_repository_proto, credentialsv1.File_ferry_credentials_v1_credentials_proto,
	}
	browser := []string{"Content-Type", "application/json", "Origin", f.APIURL(), "Sec-Fetch-Site", "same-origin", "Cookie", "session=1"}
	n := 0
	for _, fd := range files {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			if sd.FullName() == "ferry.credentials.v1.CredentialService" {
				continue // devices' own: enrollment tokens and device certificates
			}
			for j := range sd.Methods().Len() {
				procedure := "/" + string(sd.FullName()) + "/" + string(sd.Methods().Get(j).Name())
				n++
				if resp, body := do(t, f, "POST", procedure, "{}", browser...); resp.StatusCode != http.StatusUnauthorized {
					t.Errorf("%s without a credential: %s %s, want 401", procedure, resp.Status, body)
				}
			}
		}
	}
	if n < 25 {
		t.Errorf("only %d procedures called", n)
	}
	viewer := append(slices.Clone(browser), "Authorization", "Bearer "+viewerKey)
	for _, procedure := range []string{
		fleetv1connect.FleetServiceSetDesiredStateProcedure, fleetv1connect.RolloutServiceCreateRolloutProcedure,
		fleetv1connect.RolloutServicePauseRolloutProcedure, fleetv1connect.FleetServiceAddDeviceProcedure,
		repositoryv1connect.RepositoryServicePublishTargetsProcedure, fleetv1connect.AuditServiceListAuditEventsProcedure,
	} {
		if resp, body := do(t, f, "POST", procedure, "{}", viewer...); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "permission_denied") {
			t.Errorf("%s as a viewer: %s %s, want 403 permission_denied", procedure, resp.Status, body)
		}
	}
	for _, path := range []string{
		"//ferry.fleet.v1.FleetService/GetFleetSummary", "/./ferry.fleet.v1.FleetService/GetFleetSummary",
		"/x/../ferry.fleet.v1.FleetService/GetFleetSummary", "/ferry.fleet.v1.FleetService/GetFleetSummary/",
		"/index.html/../ferry.fleet.v1.FleetService/GetFleetSummary",
	} {
		resp, body := do(t, f, "POST", path, "{}", browser...)
		if resp.StatusCode == http.StatusOK || strings.Contains(body, "total") {
			t.Errorf("POST %s without a credential: %s %s", path, resp.Status, body)
		}
	}
}

// TestWhoAmI checks the caller's identity for each role and both ways to
// sign in, and that it needs a credential.
func TestWhoAmI(t *testing.T) {
	keys := map[credentials.Role]string{}
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) {
		for _, r := range []credentials.Role{credentials.RoleViewer, credentials.RoleOperator, credentials.RoleRelease, credentials.RoleAuditor} {
			keys[r] = ferrytest.AddOperator(t, cfg, "op-"+string(r), r)
		}
	})
	opCert, err := tls.LoadX509KeyPair(f.Dev.OperatorCert, f.Dev.OperatorKey)
	if err != nil {
		t.Fatal(err)
	}
	certClient := &http.Client{Transport: &http2.Transport{TLSClientConfig: &tls.Config{
		RootCAs: f.CAPool(t), ServerName: "localhost", Certificates: []tls.Certificate{opCert},
	}}}
	create, pause := fleetv1connect.RolloutServiceCreateRolloutProcedure, fleetv1connect.RolloutServicePauseRolloutProcedure
	publish, audit := repositoryv1connect.RepositoryServicePublishTargetsProcedure, fleetv1connect.AuditServiceListAuditEventsProcedure
	list := fleetv1connect.FleetServiceListDevicesProcedure
	for _, tc := range []struct {
		name       string
		client     fleetv1connect.OperatorServiceClient
		want       *fleetv1.WhoAmIResponse
		may, maynt []string
	}{
		{"viewer", whoAmIClient(t, f, f.HTTPClient(t), keys[credentials.RoleViewer]),
			&fleetv1.WhoAmIResponse{Name: "op-viewer", Role: "viewer", Authentication: "api_key"}, []string{list}, []string{create, pause, publish, audit}},
		{"operator", whoAmIClient(t, f, f.HTTPClient(t), keys[credentials.RoleOperator]),
			&fleetv1.WhoAmIResponse{Name: "op-operator", Role: "operator", Authentication: "api_key"}, []string{list, create, pause}, []string{publish, audit}},
		{"release", whoAmIClient(t, f, f.HTTPClient(t), keys[credentials.RoleRelease]),
			&fleetv1.WhoAmIResponse{Name: "op-release", Role: "release", Authentication: "api_key"}, []string{list, publish}, []string{create}},
		{"auditor", whoAmIClient(t, f, f.HTTPClient(t), keys[credentials.RoleAuditor]),
			&fleetv1.WhoAmIResponse{Name: "op-auditor", Role: "auditor", Authentication: "api_key"}, []string{list, audit}, []string{create}},
		{"admin", whoAmIClient(t, f, f.HTTPClient(t), f.OperatorToken(t)),
			&fleetv1.WhoAmIResponse{Name: "dev-admin", Role: "admin", Authentication: "api_key"}, []string{list, create, publish, audit}, nil},
		{"admin by certificate", whoAmIClient(t, f, certClient, ""),
			&fleetv1.WhoAmIResponse{Name: "dev-admin", Role: "admin", Authentication: "certificate"}, []string{create, audit}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := tc.client.WhoAmI(context.Background(), connect.NewRequest(&fleetv1.WhoAmIRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			got := resp.Msg
			if got.GetName() != tc.want.GetName() || got.GetRole() != tc.want.GetRole() || got.GetAuthentication() != tc.want.GetAuthentication() {
				t.Errorf("WhoAmI = %v, want %v", got, tc.want)
			}
			allowed := got.GetAllowedProcedures()
			if !slices.IsSorted(allowed) || !slices.Contains(allowed, fleetv1connect.OperatorServiceWhoAmIProcedure) {
				t.Errorf("allowed procedures %q: want sorted, with WhoAmI", allowed)
			}
			for _, p := range tc.may {
				if !slices.Contains(allowed, p) {
					t.Errorf("%s may call %s, not listed", tc.name, p)
				}
			}
			for _, p := range tc.maynt {
				if slices.Contains(allowed, p) {
					t.Errorf("%s may not call %s, listed", tc.name, p)
				}
			}
		})
	}
	_, err = whoAmIClient(t, f, f.HTTPClient(t), "").WhoAmI(context.Background(), connect.NewRequest(&fleetv1.WhoAmIRequest{}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("WhoAmI without a credential: %v, want unauthenticated", err)
	}
}

func whoAmIClient(t *testing.T, f *ferrytest.Ferryd, c *http.Client, key string) fleetv1connect.OperatorServiceClient {
	var opts []connect.ClientOption
	if key != "" {
		opts = append(opts, ferrytest.Bearer(key))
	}
	return fleetv1connect.NewOperatorServiceClient(c, f.APIURL(), opts...)
}

// TestRepositoryStatus checks the TUF roles a fresh ferryd and a published
// repository show, against GetOnlineKeys' versions.
func TestRepositoryStatus(t *testing.T) {
	f, viewerKey := startConsole(t)
	ctx := context.Background()
	c := repositoryv1connect.NewRepositoryServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(viewerKey))
	before, err := c.GetRepositoryStatus(ctx, connect.NewRequest(&repositoryv1.GetRepositoryStatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(before.Msg.GetRoles()) != 0 || before.Msg.GetNow() == nil {
		t.Errorf("before the root is published: %v, want no roles and the time", before.Msg)
	}
	f.Publish(t, "gw/fw-1.bin")
	resp, err := c.GetRepositoryStatus(ctx, connect.NewRequest(&repositoryv1.GetRepositoryStatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := c.GetOnlineKeys(ctx, connect.NewRequest(&repositoryv1.GetOnlineKeysRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{
		"root": keys.Msg.GetRootVersion(), "targets": keys.Msg.GetTargetsVersion(),
		"snapshot": keys.Msg.GetSnapshotVersion(), "timestamp": keys.Msg.GetTimestampVersion(),
	}
	roles := resp.Msg.GetRoles()
	if len(roles) < 4 {
		t.Fatalf("roles %v, want at least root, targets, snapshot, timestamp", roles)
	}
	now := resp.Msg.GetNow().AsTime()
	for i, r := range roles {
		if i < 4 {
			if name := []string{"root", "targets", "snapshot", "timestamp"}[i]; r.GetRole() != name || r.GetVersion() != want[name] {
				t.Errorf("role %d: %v, want %s version %d", i, r, name, want[name])
			}
		}
		if online := r.GetRole() == "snapshot" || r.GetRole() == "timestamp"; r.GetOnline() != online {
			t.Errorf("%s: online %v", r.GetRole(), r.GetOnline())
		}
		if !r.GetExpireTime().AsTime().After(now) || r.GetExpired() || r.GetRole() != "targets" && r.GetExpiresSoon() {
			t.Errorf("%s: expires %v (soon %v, expired %v), ferryd's time %v", r.GetRole(), r.GetExpireTime().AsTime(), r.GetExpiresSoon(), r.GetExpired(), now)
		}
	}
}

// TestAttestationVerified checks that a report a device signed and ferryd
// recorded comes back verified, with its statement and chain decoded.
func TestAttestationVerified(t *testing.T) {
	f, viewerKey := startConsole(t)
	f.Publish(t, "gw/fw-2.bin")
	ctx := context.Background()
	dev := f.OpenDevice(t, "dev-1", &devicev1.Hello{})
	set, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Bundle: bundle("gw/fw-2.bin")},
	}))
	if err != nil {
		t.Fatal(err)
	}
	delta := dev.Recv().GetDelta()
	dev.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{Envelope: dev.Sign(&devicev1.Report{
		JobId: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(), Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
		Reported: &devicev1.ReportedState{Bundle: delta.GetDesired().GetBundle()},
	}, dev.Nonce)}}})
	if a := dev.Recv().GetAccepted(); a == nil {
		t.Fatal("report not accepted")
	}
	job := set.Msg.GetDevice().GetDesired().GetJobId()
	att, err := f.Fleet(t, ferrytest.Bearer(viewerKey)).GetAttestation(ctx, connect.NewRequest(&fleetv1.GetAttestationRequest{DeviceId: "dev-1", JobId: job}))
	if err != nil {
		t.Fatal(err)
	}
	m := att.Msg
	if !m.GetVerified() || m.GetVerificationError() != "" {
		t.Errorf("verified %v: %q", m.GetVerified(), m.GetVerificationError())
	}
	var st attest.Statement
	if err := json.Unmarshal([]byte(m.GetStatementJson()), &st); err != nil || st.Predicate.JobID != job || st.Subject[0].Name != "gw/fw-2.bin" {
		t.Errorf("statement %s: %+v, %v", m.GetStatementJson(), st, err)
	}
	if len(m.GetCertificates()) == 0 || !slices.Contains(m.GetCertificates()[0].GetUris(), "spiffe://ferry.test/device/dev-1") {
		t.Errorf("certificates %v", m.GetCertificates())
	}
}
