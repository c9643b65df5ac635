package credentials

import (
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestParseDeviceURI(t *testing.T) {
	tests := []struct {
		uri, want string
		ok        bool
	}{
		{"spiffe://ferry.test/device/dev-1", "dev-1", true},
		{"spiffe://ferry.test/device/gw2.A_b-9", "gw2.A_b-9", true},
		{"spiffe://other.test/device/dev-1", "", false},
		{"spiffe://ferry.test/operator/dev-1", "", false},
		{"spiffe://ferry.test/device/", "", false},
		{"spiffe://ferry.test/device/a/b", "", false},
		{"spiffe://ferry.test/device/..", "", false},
		{"spiffe://ferry.test/device/%2e%2e", "", false},
		{"spiffe://ferry.test/device/dev-1?x=1", "", false},
		{"spiffe://ferry.test/device/dev-1#f", "", false},
		{"spiffe://ferry.test:443/device/dev-1", "", false},
		{"spiffe://u@ferry.test/device/dev-1", "", false},
		{"https://ferry.test/device/dev-1", "", false},
		{"spiffe:ferry.test/device/dev-1", "", false},
		{"spiffe://ferry.test/device/" + strings.Repeat("a", 129), "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, err := ParseDeviceURI("ferry.test", tt.uri)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("ParseDeviceURI(%q) = %q, %v; want %q, ok=%v", tt.uri, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("ParseDeviceURI(%q) error %v is not ErrUnauthenticated", tt.uri, err)
		}
	}
}

func TestDeviceIDNeedsOneURI(t *testing.T) {
	a, b := DeviceURI("ferry.test", "a"), DeviceURI("ferry.test", "b")
	tests := []struct {
		name string
		uris []*url.URL
		ok   bool
	}{
		{"one", []*url.URL{a}, true},
		{"none", nil, false},
		{"two", []*url.URL{a, b}, false},
	}
	for _, tt := range tests {
		_, err := DeviceID("ferry.test", &x509.Certificate{URIs: tt.uris})
		if tt.ok != (err == nil) {
			t.Errorf("%s: DeviceID error = %v", tt.name, err)
		}
	}
	if _, err := DeviceID("ferry.test", nil); err == nil {
		t.Error("DeviceID(nil) succeeded")
	}
}

func FuzzParseDeviceURI(f *testing.F) {
	f.Add("spiffe://ferry.test/device/dev-1")
	f.Add("spiffe://ferry.test/device/%2e")
	f.Add("spiffe://[::1]/device/x")
	f.Fuzz(func(t *testing.T, uri string) {
		id, err := ParseDeviceURI("ferry.test", uri)
		if err != nil {
			return
		}
		if !ValidDeviceID(id) {
			t.Fatalf("accepted malformed id %q from %q", id, uri)
		}
		if got := DeviceURI("ferry.test", id).String(); got != "spiffe://ferry.test/device/"+id {
			t.Fatalf("round trip of %q gives %q", id, got)
		}
	})
}
