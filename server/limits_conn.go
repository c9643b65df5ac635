package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/netutil"
)

// Connection limits, on both ports: a cap on the connections open in total
// (below the descriptor limit: when it is reached, Accept waits and new
// connections stay in the kernel's backlog, taking no descriptor of
// ferryd's), a cap per source address (more are closed as soon as they are
// accepted), and, where the protocol stack has no deadline of its own, a
// deadline by which a new connection must have sent its first request.

// connLimits configures limitListener.
type connLimits struct {
	port      string // "device" or "api", for metrics
	total     int    // connections open at once; 0: no cap
	perSource int    // connections open at once from one address; 0: no cap
	// firstRequest is how long a connection may take from its accept to
	// its first request (TLS handshake, HTTP/2 preface, headers) before it
	// is closed; 0: no deadline. The first request calls conn.proven.
	firstRequest time.Duration
}

// limitListener is a listener with connLimits.
type limitListener struct {
	net.Listener // netutil.LimitListener: the total cap
	limits       connLimits
	metrics      *connMetrics

	mu       sync.Mutex
	bySource map[netip.Addr]int
}

// limitListen wraps l with the limits.
func limitListen(l net.Listener, limits connLimits, m *connMetrics) *limitListener {
	inner := l
	if limits.total > 0 {
		inner = netutil.LimitListener(l, limits.total)
	}
	return &limitListener{Listener: inner, limits: limits, metrics: m, bySource: map[netip.Addr]int{}}
}

// Accept returns the next connection its source address has room for;
// connections over the per-source cap are closed and not returned.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := sourceAddr(c)
		if !l.take(src) {
			l.metrics.refused.WithLabelValues(l.limits.port, "per_source").Inc()
			c.Close() // frees its slot of the total cap
			continue
		}
		l.metrics.open.WithLabelValues(l.limits.port).Inc()
		lc := &limitedConn{Conn: c, release: func() {
			l.give(src)
			l.metrics.open.WithLabelValues(l.limits.port).Dec()
		}}
		if d := l.limits.firstRequest; d > 0 {
			lc.timer.Store(time.AfterFunc(d, func() {
				l.metrics.refused.WithLabelValues(l.limits.port, "first_request_deadline").Inc()
				lc.Close()
			}))
		}
		return lc, nil
	}
}

// take counts a connection from src, or reports that src has no room.
func (l *limitListener) take(src netip.Addr) bool {
	if l.limits.perSource <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bySource[src] >= l.limits.perSource {
		return false
	}
	l.bySource[src]++
	return true
}

func (l *limitListener) give(src netip.Addr) {
	if l.limits.perSource <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bySource[src]--; l.bySource[src] <= 0 {
		delete(l.bySource, src)
	}
}

// fromSource returns how many connections from src are open.
func (l *limitListener) fromSource(src netip.Addr) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bySource[src]
}

// sourceAddr is the address a connection comes from (IPv4-mapped IPv6
// addresses as IPv4); the zero Addr when it has none.
func sourceAddr(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// limitedConn is an accepted connection that gives its place back when it
// is closed.
type limitedConn struct {
	net.Conn
	release func()
	// timer is the first-request deadline, if any; atomic because it may
	// fire before Accept has stored it.
	timer atomic.Pointer[time.Timer]
	once  sync.Once
}

// proven stops the first-request deadline: the connection has sent a
// request.
func (c *limitedConn) proven() {
	if t := c.timer.Load(); t != nil {
		t.Stop()
	}
}

func (c *limitedConn) Close() error {
	c.once.Do(func() {
		c.proven()
		c.release()
	})
	return c.Conn.Close()
}

// limitedConnKey carries a request's limitedConn in its context.
type limitedConnKey struct{}

// rememberConn is the API server's ConnContext: it keeps the connection in
// the context of the requests on it, so that the first one can stop the
// first-request deadline.
func rememberConn(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if lc, ok := c.(*limitedConn); ok {
		return context.WithValue(ctx, limitedConnKey{}, lc)
	}
	return ctx
}

// provenConn stops the first-request deadline of the connection ctx's
// request came on.
func provenConn(ctx context.Context) {
	if lc, ok := ctx.Value(limitedConnKey{}).(*limitedConn); ok {
		lc.proven()
	}
}

// connMetrics count connections on both ports.
type connMetrics struct {
	open    *prometheus.GaugeVec
	refused *prometheus.CounterVec
	// requestsRefused counts API requests refused by a request limit
	// before their handler ran or while their body was read.
	requestsRefused *prometheus.CounterVec
	// inflight is the request bytes the API port holds (see byteBudget).
	inflight prometheus.Gauge
}

func newConnMetrics(reg *prometheus.Registry) *connMetrics {
	m := &connMetrics{
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_connections_open", Help: "Connections open, by port.",
		}, []string{"port"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_connections_refused_total", Help: "Connections closed by a connection limit, by port and limit (per_source, first_request_deadline).",
		}, []string{"port", "limit"}),
		requestsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_api_requests_refused_total", Help: "Back-office requests refused before their handler read them, by reason (unauthenticated, permission_denied, too_large, inflight_bytes, cross_site).",
		}, []string{"reason"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_api_inflight_request_bytes", Help: "Request bytes the back-office port holds at once, counted against --api-max-inflight-bytes.",
		}),
	}
	reg.MustRegister(m.open, m.refused, m.requestsRefused, m.inflight)
	return m
}

// descriptorReserve is how many descriptors the connection caps leave for
// the store's connections, the listeners and logs: a sixty-fourth of the
// limit, at least 256. connectionCaps also sets aside one descriptor per
// API connection for the file it may be serving.
func descriptorReserve(nofile int) int {
	return max(256, nofile/64)
}

// connectionCaps returns the total connection caps of the device and API
// ports: the configured ones, and for a cap of 0 a share of the
// descriptors left (nofile, less descriptorReserve): the API port gets a
// sixteenth of them (at least 16, at most 4096) and the device port the
// rest, less one descriptor per API connection for the file it may be
// serving. It fails when the caps would leave less than that.
func connectionCaps(device, api, nofile int) (int, int, error) {
	avail := nofile - descriptorReserve(nofile)
	if api == 0 {
		api = min(max(avail/16, 16), 4096)
		if device > 0 {
			api = min(max((avail-device)/2, 16), 4096)
		}
	}
	if device == 0 {
		device = max(avail-2*api, 16)
	}
	if device+2*api > avail {
		return 0, 0, fmt.Errorf("connection caps: device port %d plus API port %d (twice: a connection and the file it serves) is over the %d descriptors left of this process's limit of %d after a reserve of %d for the store and logs; lower --device-max-conns or --api-max-conns, or raise the limit (ulimit -n)",
			device, api, max(avail, 0), nofile, descriptorReserve(nofile))
	}
	return device, api, nil
}
