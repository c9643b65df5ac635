package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/prometheus/client_golang/prometheus"

	ferrycreds "github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/proto/ferry/credentials/v1/credentialsv1connect"
	"github.com/ferryhq/ferry/proto/ferry/repository/v1/repositoryv1connect"
)

// Request limits on the API port, applied before any handler work: an
// operator credential is checked from the headers and the TLS state before
// a byte of the body is read (except for the anonymous paths), a body
// declared or read past its path's limit is refused, and every body read is
// counted against a budget of request bytes held in the whole process.

// envelopeSlack is what a request body may carry beyond its message: the
// gRPC and Connect streaming envelope prefixes, end-of-stream frames.
const envelopeSlack = 64

// route is how the guard treats a request path.
type route struct {
	// operator: the path needs an operator credential, checked here.
	operator bool
	// maxMessage is the largest message the path's handler reads.
	maxMessage int64
	// stream: the body is a stream of messages of at most maxMessage each
	// (UploadBlob), with no cap on its total.
	stream bool
}

// anonymousPrefixes are the paths served without an operator credential.
// Their handlers authenticate callers themselves (enrollment tokens,
// device certificates, download tokens) or serve anyone (health), and
// read at most APILimits.MaxAnonymousMessageBytes.
var anonymousPrefixes = []string{
	"/" + credentialsv1connect.CredentialServiceName + "/",
	"/" + grpchealth.HealthV1ServiceName + "/",
	"/tuf/",                                 // GET only; download tokens or device certificates (tufhttp.go)
	"/metrics", LivenessPath, ReadinessPath, // GET only; metrics check the operator themselves
}

// routeOf classifies a request path.
func (g *apiGuard) routeOf(path string) route {
	for _, p := range anonymousPrefixes {
		if path == p || strings.HasPrefix(path, p) && strings.HasSuffix(p, "/") {
			return route{maxMessage: g.limits.MaxAnonymousMessageBytes}
		}
	}
	if path == repositoryv1connect.RepositoryServiceUploadBlobProcedure {
		return route{operator: true, maxMessage: g.limits.MaxMessageBytes, stream: true}
	}
	if service, _, ok := strings.Cut(strings.TrimPrefix(path, "/"), "/"); ok && strings.Contains(service, ".") {
		// Every other procedure ("/package.Service/Method"), known or
		// not, needs an operator.
		return route{operator: true, maxMessage: g.limits.MaxMessageBytes}
	}
	// Any other path is not served (404, its body unread).
	return route{maxMessage: g.limits.MaxAnonymousMessageBytes}
}

// apiGuard is the API port's outermost handler.
type apiGuard struct {
	limits  APILimits
	auth    Authenticator
	certs   *ferrycreds.OperatorCerts
	budget  *byteBudget
	metrics *connMetrics
	errors  *connect.ErrorWriter
	// denied, if set, is told of every operator call refused for its
	// credential (the audit trail).
	denied func(r *http.Request, op ferrycreds.Operator, err error)
}

func newAPIGuard(limits APILimits, auth Authenticator, certs *ferrycreds.OperatorCerts, m *connMetrics) *apiGuard {
	return &apiGuard{
		limits: limits, auth: auth, certs: certs, metrics: m,
		budget: &byteBudget{max: limits.MaxInflightBytes, gauge: m.inflight},
		errors: connect.NewErrorWriter(),
	}
}

// wrap guards next.
func (g *apiGuard) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		provenConn(r.Context()) // a request came: the connection's first-request deadline is met
		rt := g.routeOf(r.URL.Path)
		if rt.operator {
			op, err := authorizeRequest(g.auth, g.certs, r.Header, r.TLS, roleFor(r.URL.Path))
			if err != nil {
				if g.denied != nil {
					g.denied(r, op, err)
				}
				g.refuse(w, r, err)
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), operatorKey{}, op))
		}
		total := int64(0) // no cap on the whole body
		if !rt.stream {
			total = rt.maxMessage + envelopeSlack
			if r.ContentLength > total {
				g.refuse(w, r, connect.NewError(connect.CodeResourceExhausted,
					fmt.Errorf("request body of %d bytes is over this call's limit of %d", r.ContentLength, rt.maxMessage)))
				return
			}
		}
		if r.Body != nil && r.Body != http.NoBody {
			body := &budgetBody{body: r.Body, budget: g.budget, total: total, chargeCap: rt.maxMessage + envelopeSlack, refused: g.metrics.requestsRefused}
			defer body.release()
			r.Body = body
		}
		next.ServeHTTP(w, r)
	})
}

// refuse answers err in the caller's protocol (Connect, gRPC, gRPC-Web),
// or as plain HTTP.
func (g *apiGuard) refuse(w http.ResponseWriter, r *http.Request, err error) {
	code := connect.CodeOf(err)
	g.metrics.requestsRefused.WithLabelValues(refusalReason(code)).Inc()
	if g.errors.IsSupported(r) {
		g.errors.Write(w, r, err)
		return
	}
	status := http.StatusUnauthorized
	switch code {
	case connect.CodePermissionDenied:
		status = http.StatusForbidden
	case connect.CodeResourceExhausted:
		status = http.StatusRequestEntityTooLarge
	}
	var ce *connect.Error
	msg := err.Error()
	if errors.As(err, &ce) {
		msg = ce.Message()
	}
	http.Error(w, msg, status)
}

func refusalReason(code connect.Code) string {
	switch code {
	case connect.CodeUnauthenticated:
		return "unauthenticated"
	case connect.CodePermissionDenied:
		return "permission_denied"
	case connect.CodeResourceExhausted:
		return "too_large"
	}
	return code.String()
}

// byteBudget is the request bytes the API port holds at once, over all
// requests.
type byteBudget struct {
	max   int64
	used  atomic.Int64
	gauge prometheus.Gauge // shows used, if set
}

// take reserves n bytes, or reports that they would exceed the budget.
func (b *byteBudget) take(n int64) bool {
	used := b.used.Add(n)
	if used > b.max {
		b.used.Add(-n)
		return false
	}
	b.show(used)
	return true
}

func (b *byteBudget) give(n int64) { b.show(b.used.Add(-n)) }

func (b *byteBudget) show(used int64) {
	if b.gauge != nil {
		b.gauge.Set(float64(used))
	}
}

// errInflight refuses a body the request budget has no room for. It is
// UNAVAILABLE: the same call succeeds once other requests are done.
var errInflight = connect.NewError(connect.CodeUnavailable,
	errors.New("ferryd is receiving as many request bytes as it holds at once; retry shortly"))

// budgetBody is a request body that counts what is read of it against
// the budget (up to chargeCap: what the handler may buffer of it at once)
// until the request ends, and that refuses to be read past total bytes
// (0: no cap).
type budgetBody struct {
	body          io.ReadCloser
	budget        *byteBudget
	total         int64
	chargeCap     int64
	refused       *prometheus.CounterVec
	read, charged int64
}

func (b *budgetBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	b.read += int64(n)
	if b.total > 0 && b.read > b.total {
		b.refused.WithLabelValues("too_large").Inc()
		return 0, &http.MaxBytesError{Limit: b.total - envelopeSlack}
	}
	if more := min(b.read, b.chargeCap) - b.charged; more > 0 {
		if !b.budget.take(more) {
			b.refused.WithLabelValues("inflight_bytes").Inc()
			return 0, errInflight
		}
		b.charged += more
	}
	return n, err
}

func (b *budgetBody) Close() error { return b.body.Close() }

// release gives back what the request held of the budget.
func (b *budgetBody) release() {
	b.budget.give(b.charged)
	b.charged = 0
}
