package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/grpchealth"
)

// Plain HTTP health on the API port, for probes that speak neither gRPC
// nor Connect (Kubernetes httpGet, load balancers, curl). Both are
// anonymous GETs; the body is one short line.
const (
	// LivenessPath answers 200 while ferryd serves and 503 from the moment
	// it starts stopping.
	LivenessPath = "/healthz"
	// ReadinessPath answers 200 when ferryd can do its work: it is not
	// stopping, its store answers, and the snapshot and timestamp it signs
	// have not expired. Otherwise 503 with the reason.
	ReadinessPath = "/readyz"
)

// The store is pinged in the background every storeCheckEvery (each ping
// bounded by storeCheckTimeout), and readiness answers from the last
// result: a probe costs no store round trip, and gRPC health follows the
// store too.
const (
	storeCheckEvery   = time.Second
	storeCheckTimeout = time.Second
)

// pinger is a store that can say whether it is reachable.
type pinger interface {
	Ping(ctx context.Context) error
}

// storeCheck is the cached answer to "does the store answer?".
type storeCheck struct {
	store pinger // nil: a store that cannot be unreachable (embedded)
	down  atomic.Bool
}

// runStoreCheck pings the store every storeCheckEvery until ctx ends,
// keeps the answer for readiness, and turns gRPC health NOT_SERVING while
// the store is unreachable and SERVING again when it answers (unless
// ferryd is stopping).
func (s *Server) runStoreCheck(ctx context.Context) {
	c := s.storeCheck
	if c.store == nil {
		return
	}
	tick := time.NewTicker(storeCheckEvery)
	defer tick.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, storeCheckTimeout)
		err := c.store.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		down := err != nil
		if c.down.Swap(down) != down {
			if down {
				// The cause (addresses, say) goes to the log, not to an
				// anonymous caller.
				s.log.WarnContext(ctx, "store unreachable: not ready until it answers", "err", err)
			} else {
				s.log.InfoContext(ctx, "store answers again: ready")
			}
			s.setServing(!down)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// setServing sets the gRPC health of every served service. SERVING is
// never left in place once a graceful stop has begun: shutdown sets
// stopping before NOT_SERVING, so a SERVING written concurrently is seen
// and undone here.
func (s *Server) setServing(serving bool) {
	st := grpchealth.StatusNotServing
	if serving && !s.stopping.Load() {
		st = grpchealth.StatusServing
	}
	set := func(st grpchealth.Status) {
		s.health.SetStatus("", st)
		for _, name := range servedNames {
			s.health.SetStatus(name, st)
		}
	}
	set(st)
	if st == grpchealth.StatusServing && s.stopping.Load() {
		set(grpchealth.StatusNotServing)
	}
}

func (s *Server) healthHandlers(mux *http.ServeMux) {
	s.storeCheck = &storeCheck{}
	if p, ok := s.devices.(pinger); ok {
		s.storeCheck.store = p
	}
	mux.HandleFunc("GET "+LivenessPath, func(w http.ResponseWriter, r *http.Request) {
		if s.stopping.Load() {
			probeAnswer(w, http.StatusServiceUnavailable, "stopping")
			return
		}
		probeAnswer(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET "+ReadinessPath, func(w http.ResponseWriter, r *http.Request) {
		if reason := s.notReady(r.Context()); reason != "" {
			probeAnswer(w, http.StatusServiceUnavailable, reason)
			return
		}
		probeAnswer(w, http.StatusOK, "ok")
	})
}

// notReady returns why ferryd is not ready, or "".
func (s *Server) notReady(ctx context.Context) string {
	if s.stopping.Load() {
		return "stopping"
	}
	if s.storeCheck.down.Load() {
		return "store unreachable" // runStoreCheck logs why
	}
	if err := s.repo.repo.CheckOnlineExpiry(); err != nil {
		s.log.WarnContext(ctx, "not ready: repository metadata expired", "err", err)
		return "repository: " + err.Error()
	}
	return ""
}

func probeAnswer(w http.ResponseWriter, code int, line string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	io.WriteString(w, line+"\n")
}

// Probe GETs path (LivenessPath or ReadinessPath) from the API port at
// apiAddr, as a container health check does: over HTTPS, with no
// credential, without verifying the serving certificate (nothing secret is
// sent, and the answer only decides the probe's exit status). An address
// without a host, or with an unspecified one (":8443", "0.0.0.0:8443"),
// is probed on loopback. It returns the answer's line, and an error unless
// the status is 200.
func Probe(ctx context.Context, apiAddr, path string) (string, error) {
	host, port, err := net.SplitHostPort(apiAddr)
	if err != nil {
		return "", fmt.Errorf("API address %q: want host:port", apiAddr)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	url := "https://" + net.JoinHostPort(host, port) + path
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	line := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return line, fmt.Errorf("%s: %s: %s", url, resp.Status, line)
	}
	return line, nil
}
