package server_test

import (
	"bytes"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// alwaysAuthorization sends one Authorization header on every request, as
// generic TUF clients do with a configured token.
type alwaysAuthorization struct {
	value string
	next  http.RoundTripper
}

func (a alwaysAuthorization) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", a.value)
	return a.next.RoundTrip(r)
}

// TestMetadataWithDeviceCertificateAndAuthorization: over real mutual TLS
// to a real ferryd, TUF metadata is served to a device certificate
// whatever Authorization header comes with it, unless the header is an
// API key, which is checked as one; without a certificate a bad
// credential is refused; targets still need the download token.
func TestMetadataWithDeviceCertificateAndAuthorization(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	ctx := t.Context()
	gw, gone := enroll(t, f, "gw-meta"), enroll(t, f, "gw-gone")
	fw := bytes.Repeat([]byte("metadata and a token "), 300)
	fx := newRepoFixture(t, f, tuftest.Options{})
	fx.add(t, "meta/fw.bin", fw)
	setDesired(t, f.Fleet(t), "gw-meta", "meta/fw.bin", fw)
	tok := mustToken(t, f, gw, &credentialsv1.IssueDownloadTokenRequest{TargetPath: "meta/fw.bin"})
	if _, err := f.Fleet(t).RevokeDevice(ctx, connect.NewRequest(&fleetv1.RevokeDeviceRequest{DeviceId: "gw-gone", Reason: "test"})); err != nil {
		t.Fatal(err)
	}
	wrongKey, err := credentials.NewAPIKey() // well formed, but no operator's
	if err != nil {
		t.Fatal(err)
	}
	noCert := &tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost"}
	metadata := f.APIURL() + "/tuf/metadata/timestamp.json"
	get := func(tlsConfig *tls.Config, url, authorization string) (int, string) {
		t.Helper()
		client := &http.Client{Transport: &http2.Transport{TLSClientConfig: tlsConfig}}
		defer client.CloseIdleConnections()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	tests := []struct {
		name          string
		tls           *tls.Config
		url           string
		authorization string
		want          int
	}{
		{"device certificate alone", gw.tls, metadata, "", 200},
		{"device certificate and its download token", gw.tls, metadata, "Bearer " + tok.GetToken(), 200},
		{"device certificate and a garbage bearer token", gw.tls, metadata, "Bearer not-a-token", 200},
		{"device certificate and an empty bearer token", gw.tls, metadata, "Bearer ", 200},
		{"device certificate and Basic credentials", gw.tls, metadata, "Basic dXNlcjpwYXNz", 200},
		{"device certificate and the operator's API key", gw.tls, metadata, "Bearer " + f.OperatorToken(t), 200},
		// An API key is a claim to be an operator: a wrong one is refused
		// even with a device certificate.
		{"device certificate and a wrong API key", gw.tls, metadata, "Bearer " + wrongKey, 401},
		{"revoked device and a garbage bearer token", gone.tls, metadata, "Bearer not-a-token", 403},
		{"no certificate, a wrong API key", noCert, metadata, "Bearer " + wrongKey, 401},
		{"no certificate, a garbage bearer token", noCert, metadata, "Bearer not-a-token", 401},
		{"no certificate, a download token", noCert, metadata, "Bearer " + tok.GetToken(), 401},
		{"no certificate, nothing", noCert, metadata, "", 401},
		{"no certificate, the operator's API key", noCert, metadata, "Bearer " + f.OperatorToken(t), 200},
		// Targets: the device certificate is not enough.
		{"target: device certificate alone", gw.tls, tok.GetUrl(), "", 401},
		{"target: device certificate and a garbage bearer token", gw.tls, tok.GetUrl(), "Bearer not-a-token", 401},
		{"target: device certificate and its download token", gw.tls, tok.GetUrl(), "Bearer " + tok.GetToken(), 200},
	}
	for _, tt := range tests {
		code, body := get(tt.tls, tt.url, tt.authorization)
		if code != tt.want {
			t.Errorf("%s: %d %q, want %d", tt.name, code, strings.TrimSpace(body), tt.want)
		}
		if code == 200 && tt.url == metadata && !strings.Contains(body, `"_type":"timestamp"`) && !strings.Contains(body, `"_type": "timestamp"`) {
			t.Errorf("%s: 200 without timestamp metadata: %.100q", tt.name, body)
		}
	}

	// go-tuf's updater with a transport that sends the download token on
	// every request, metadata included: the whole update works.
	u, err := fx.tufClient(t, &http.Client{Transport: alwaysAuthorization{
		value: "Bearer " + tok.GetToken(), next: &http2.Transport{TLSClientConfig: gw.tls},
	}}).refresh()
	if err != nil {
		t.Fatalf("updater refresh with the token on every request: %v", err)
	}
	info, err := u.GetTargetInfo("meta/fw.bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, data, err := u.DownloadTarget(info, "", ""); err != nil || !bytes.Equal(data, fw) {
		t.Fatalf("DownloadTarget with the token on every request: %v", err)
	}
}
