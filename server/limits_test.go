package server

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
)

func TestConnectionCaps(t *testing.T) {
	tests := []struct {
		name                string
		device, api, nofile int
		wantDevice, wantAPI int
		wantErr             bool
	}{
		{"derived from 20000", 0, 0, 20000, 17228, 1230, false},
		{"derived from 1024", 0, 0, 1024, 672, 48, false},
		{"derived from a million: the API port's share is capped", 0, 0, 1 << 20, 1024000, 4096, false},
		{"device set, API derived", 10000, 0, 20000, 10000, 4096, false},
		{"API set, device derived", 0, 1000, 20000, 17688, 1000, false},
		{"a small API port leaves 19,000 for devices", 0, 128, 20000, 19432, 128, false},
		{"both set, fitting", 15000, 2000, 20000, 15000, 2000, false},
		{"both set, over the descriptors left", 17000, 2000, 20000, 0, 0, true},
		{"a limit too low for any", 0, 0, 200, 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, a, err := connectionCaps(tt.device, tt.api, tt.nofile)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), "--device-max-conns") {
					t.Errorf("error %q does not say what to change", err)
				}
				return
			}
			if d != tt.wantDevice || a != tt.wantAPI {
				t.Errorf("caps %d, %d; want %d, %d", d, a, tt.wantDevice, tt.wantAPI)
			}
			if d+2*a+descriptorReserve(tt.nofile) > tt.nofile {
				t.Errorf("caps %d + 2×%d leave less than the reserve of %d descriptors", d, a, descriptorReserve(tt.nofile))
			}
		})
	}
}

// TestLimitListenerPerSource: connections over a source's cap are closed
// at once; others' sources are not affected; a closed connection gives its
// place back; an unproven connection is closed at its deadline.
func TestLimitListenerPerSource(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newConnMetrics(prometheus.NewRegistry())
	l := limitListen(inner, connLimits{port: "test", total: 100, perSource: 2, firstRequest: 300 * time.Millisecond}, m)
	defer l.Close()
	accepted := make(chan net.Conn, 100)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(src byte) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, src)}}
		c, err := d.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	closed := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
	steps := []struct {
		name       string
		src        byte
		wantClosed bool
	}{
		{"first from .2", 2, false},
		{"second from .2", 2, false},
		{"third from .2: over its cap", 2, true},
		{"first from .3", 3, false},
	}
	var kept []net.Conn
	for _, s := range steps {
		c := dial(s.src)
		if s.wantClosed {
			if !closed(c) {
				t.Errorf("%s: not closed", s.name)
			}
			continue
		}
		select {
		case sc := <-accepted:
			sc.(*limitedConn).proven()
			kept = append(kept, sc)
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: not accepted", s.name)
		}
	}
	src2 := netip.MustParseAddr("127.0.0.2")
	if n := l.fromSource(src2); n != 2 {
		t.Errorf("open from .2: %d, want 2", n)
	}
	kept[0].Close()
	kept[0].Close() // a second Close gives nothing back twice
	if n := l.fromSource(src2); n != 1 {
		t.Errorf("open from .2 after one closed: %d, want 1", n)
	}
	// The place is free again; this one never proves itself.
	c := dial(2)
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("a connection in a freed place was not accepted")
	}
	if !closed(c) {
		t.Error("a connection that sent no request was not closed at its first-request deadline")
	}
	if got := l.fromSource(src2); got != 1 {
		t.Errorf("open from .2 after the deadline: %d, want 1", got)
	}
}

// TestBudgetBody: a body is refused past its total, and past the budget
// (UNAVAILABLE, counted), and gives back what it held when released.
func TestBudgetBody(t *testing.T) {
	tests := []struct {
		name      string
		size      int
		budget    int64
		held      int64 // taken by others first
		total     int64
		chargeCap int64
		wantCode  connect.Code // 0: read to the end
		wantHeld  int64        // charged before release
	}{
		{"small body", 100, 1000, 0, 500, 500, 0, 100},
		{"over its total", 1000, 10000, 0, 500, 500, connect.CodeResourceExhausted, 0},
		{"over the budget", 400, 1000, 800, 500, 500, connect.CodeUnavailable, 0},
		{"a stream is charged up to its cap", 5000, 1000, 0, 0, 300, 0, 300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &byteBudget{max: tt.budget}
			b.take(tt.held)
			body := &budgetBody{
				body: io.NopCloser(bytes.NewReader(make([]byte, tt.size))), budget: b,
				total: tt.total, chargeCap: tt.chargeCap,
				refused: newConnMetrics(prometheus.NewRegistry()).requestsRefused,
			}
			_, err := io.Copy(io.Discard, body)
			var mbe *http.MaxBytesError
			switch {
			case tt.wantCode == 0 && err != nil:
				t.Fatalf("read: %v", err)
			case tt.wantCode == connect.CodeResourceExhausted && !errors.As(err, &mbe):
				t.Fatalf("read: %v, want a MaxBytesError (resource_exhausted)", err)
			case tt.wantCode == connect.CodeUnavailable && connect.CodeOf(err) != connect.CodeUnavailable:
				t.Fatalf("read: %v, want unavailable", err)
			}
			if tt.wantCode == 0 && body.charged != tt.wantHeld {
				t.Errorf("charged %d, want %d", body.charged, tt.wantHeld)
			}
			body.release()
			if got := b.used.Load(); got != tt.held {
				t.Errorf("budget used after release %d, want %d", got, tt.held)
			}
		})
	}
}

func TestRouteOf(t *testing.T) {
	g := &apiGuard{limits: DefaultConfig().API}
	tests := []struct {
		path     string
		operator bool
		stream   bool
	}{
		{"/ferry.fleet.v1.FleetService/GetDevice", true, false},
		{"/ferry.repository.v1.RepositoryService/UploadBlob", true, true},
		{"/ferry.credentials.v1.CredentialService/Enroll", false, false},
		{"/ferry.credentials.v1.DownloadKeyService/RotateDownloadKey", true, false},
		{"/grpc.health.v1.Health/Check", false, false},
		{"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", true, false},
		{"/tuf/targets/x", false, false},
		{"/healthz", false, false},
		{"/healthzz", false, false},
		{"/metrics", false, false},
		{"/unknown", false, false},
		{"/unknown/path", false, false},
		{"/ferry.unknown.v1.Service/Method", true, false},
	}
	for _, tt := range tests {
		r := g.routeOf(tt.path)
		if r.operator != tt.operator || r.stream != tt.stream {
			t.Errorf("%s: operator %v stream %v, want %v %v", tt.path, r.operator, r.stream, tt.operator, tt.stream)
		}
		want := g.limits.MaxMessageBytes
		if !tt.operator {
			want = g.limits.MaxAnonymousMessageBytes
		}
		if r.maxMessage != want {
			t.Errorf("%s: max message %d, want %d", tt.path, r.maxMessage, want)
		}
	}
}
