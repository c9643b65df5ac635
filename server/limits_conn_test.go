package server_test

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	"github.com/ferryhq/ferry/server"
)

// floodLimits are the connection limits of the flood test's ferryd: low, so
// that the flood stays far inside this machine's descriptor limit.
const (
	floodPerSource = 32
	floodDevice    = 300
	floodAPI       = 200
	floodHandshake = 2 * time.Second
)

// idleKind is a way of holding a connection open without a request.
type idleKind struct {
	name string
	port string // "device" or "api"
	n    int    // how many the flood opens
	// open connects with d and stops where the kind stops.
	open func(addr string, d *net.Dialer) (net.Conn, error)
}

// halfClientHello is the start of a TLS ClientHello whose record promises
// 512 bytes: a server reading it waits for the rest.
var halfClientHello = []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}

// h2Preface is the HTTP/2 client preface and an empty SETTINGS frame.
var h2Preface = append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)

func tcpIdle(addr string, d *net.Dialer) (net.Conn, error) {
	return d.Dial("tcp", addr)
}

func halfHello(addr string, d *net.Dialer) (net.Conn, error) {
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(halfClientHello); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// tlsNoPreface finishes the handshake with cfg and sends nothing more.
func tlsNoPreface(cfg *tls.Config) func(string, *net.Dialer) (net.Conn, error) {
	return func(addr string, d *net.Dialer) (net.Conn, error) {
		c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}

// prefaceNoRequest finishes the handshake with cfg, sends the HTTP/2
// preface and settings, and no request.
func prefaceNoRequest(cfg *tls.Config) func(string, *net.Dialer) (net.Conn, error) {
	return func(addr string, d *net.Dialer) (net.Conn, error) {
		c, err := tlsNoPreface(cfg)(addr, d)
		if err != nil {
			return nil, err
		}
		if _, err := c.Write(h2Preface); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

// closedWithin reports whether the server closes c before the deadline.
func closedWithin(c net.Conn, deadline time.Time) bool {
	c.SetReadDeadline(deadline)
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			var ne net.Error
			return !(errors.As(err, &ne) && ne.Timeout())
		}
	}
}

func openFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// TestLimitsIdleConnectionFlood: an anonymous flood of idle connections
// from one address (thousands of TCP connections, half-sent TLS
// handshakes, TLS without the HTTP/2 preface, a preface without a request)
// is held to the per-source cap and closed by the handshake and
// first-request deadlines, while authenticated devices connect and health
// answers; a flood from many addresses is held to the total cap, and
// devices get through it.
func TestLimitsIdleConnectionFlood(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) {
		cfg.Device.MaxConnsPerSource, cfg.API.MaxConnsPerSource = floodPerSource, floodPerSource
		cfg.Device.MaxConns, cfg.API.MaxConns = floodDevice, floodAPI
		cfg.Device.HandshakeTimeout, cfg.API.HandshakeTimeout = floodHandshake, floodHandshake
	})
	anonymousTLS := &tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost", NextProtos: []string{"h2"}}
	deviceTLS := f.DeviceTLS(t, "dev-1")
	deviceTLS.NextProtos = []string{"h2"}
	// The connections that complete a handshake come first, while their
	// source has room; the TCP flood then fills the rest of it.
	kinds := []idleKind{
		{"mutual TLS, no HTTP/2 preface", "device", 8, tlsNoPreface(deviceTLS)},
		{"half a ClientHello", "device", 8, halfHello},
		{"TLS, no HTTP/2 preface", "api", 8, tlsNoPreface(anonymousTLS)},
		{"HTTP/2 preface, no request", "api", 8, prefaceNoRequest(anonymousTLS)},
		{"half a ClientHello", "api", 8, halfHello},
		{"TCP, nothing sent", "device", 1500, tcpIdle},
		{"TCP, nothing sent", "api", 1000, tcpIdle},
	}
	fds := openFDs(t)
	flooder := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 10 * time.Second}
	type held struct {
		kind string
		conn net.Conn
	}
	var flood []held
	t.Cleanup(func() {
		for _, h := range flood {
			h.conn.Close()
		}
	})
	for _, k := range kinds {
		addr := f.DeviceAddr()
		if k.port == "api" {
			addr = f.APIAddr()
		}
		for range k.n {
			c, err := k.open(addr, flooder)
			if err != nil {
				t.Fatalf("%s to the %s port: %v", k.name, k.port, err)
			}
			flood = append(flood, held{k.port + " port, " + k.name, c})
		}
	}
	t.Logf("flood of %d connections from 127.0.0.2; descriptors of the test process %d -> %d", len(flood), fds, openFDs(t))

	// Authenticated devices connect and health answers during the flood.
	for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
		f.OpenDevice(t, id, &devicev1.Hello{})
	}
	resp, err := f.HTTPClient(t).Get(f.APIURL() + server.ReadinessPath)
	if err != nil {
		t.Fatalf("readiness during the flood: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("readiness during the flood: HTTP %d", resp.StatusCode)
	}
	// The flood holds no more than its source's share of either port.
	if n := scrape(t, f, `ferry_connections_open{port="device"}`); n > floodPerSource+3 {
		t.Errorf("device port: %v connections open during the flood, want at most %d (the flood's cap and three devices)", n, floodPerSource+3)
	}
	if n := scrape(t, f, `ferry_connections_open{port="api"}`); n > floodPerSource+3 {
		t.Errorf("API port: %v connections open during the flood, want at most %d (the flood's cap and this test's clients)", n, floodPerSource+3)
	}
	if n := scrape(t, f, `ferry_connections_refused_total{limit="per_source",port="device"}`); n < 1500-floodPerSource {
		t.Errorf("device port: %v connections refused for their source, want at least %d", n, 1500-floodPerSource)
	}
	if n := scrape(t, f, `ferry_connections_refused_total{limit="per_source",port="api"}`); n < 1000-floodPerSource {
		t.Errorf("API port: %v connections refused for their source, want at least %d", n, 1000-floodPerSource)
	}

	// Every flood connection is closed: over the cap at once, the others
	// at their deadline.
	deadline := time.Now().Add(floodHandshake + 8*time.Second)
	var open sync.Map
	var wg sync.WaitGroup
	for i, h := range flood {
		wg.Go(func() {
			if !closedWithin(h.conn, deadline) {
				open.Store(i, h.kind)
			}
		})
	}
	wg.Wait()
	still := map[string]int{}
	open.Range(func(_, kind any) bool { still[kind.(string)]++; return true })
	if len(still) > 0 {
		t.Errorf("connections still open 8s after the handshake deadline of %v: %v", floodHandshake, still)
	}

	// A flood from many addresses, each under its cap, is held to the
	// total cap; a device connecting meanwhile gets in as the deadlines
	// free places.
	var peak atomic.Int64
	sample := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-sample:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if n := int64(scrape(t, f, `ferry_connections_open{port="device"}`)); n > peak.Load() {
				peak.Store(n)
			}
		}
	}()
	var many []net.Conn
	t.Cleanup(func() {
		for _, c := range many {
			c.Close()
		}
	})
	for src := range 12 {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(src+1))}, Timeout: 10 * time.Second}
		for range floodPerSource - 2 {
			c, err := d.Dial("tcp", f.DeviceAddr())
			if err != nil {
				t.Fatalf("dial from %v: %v", d.LocalAddr, err)
			}
			many = append(many, c)
		}
	}
	f.OpenDevice(t, "dev-2", &devicev1.Hello{})
	close(sample)
	<-sampled
	t.Logf("device port: at most %d connections open during a flood of %d from 12 addresses (cap %d)", peak.Load(), len(many), floodDevice)
	if p := peak.Load(); p > floodDevice || p < floodDevice/2 {
		t.Errorf("device port: at most %d connections open during a flood of %d from 12 addresses, want at most the cap of %d (and near it)", p, len(many), floodDevice)
	}
	deadline = time.Now().Add(3*floodHandshake + 8*time.Second)
	stillOpen := 0
	for _, c := range many {
		if !closedWithin(c, deadline) {
			stillOpen++
		}
	}
	if stillOpen > 0 {
		t.Errorf("%d of %d connections from many addresses still open after their deadlines", stillOpen, len(many))
	}
}
