package server

import (
	"errors"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
)

// The console is served at / on the API port: static assets (the page,
// its scripts and styles), public like any web page, that call the same
// Connect API as ferryctl with the operator's credential. Nothing here
// opens the API: every procedure is authenticated by the guard and the
// interceptor as before, whatever page called it.
//
// Every answer of the API port carries X-Content-Type-Options and
// Referrer-Policy; API answers (Connect, gRPC, gRPC-Web) are never cached;
// console answers carry a Content-Security-Policy that allows only the
// console's own scripts, styles and connections, and forbids framing.
// Browsers refuse to let another site's page read API answers (ferryd
// sends no CORS headers), and the guard also refuses API requests a
// browser marks as sent from another site (Sec-Fetch-Site), so that an
// operator certificate in the browser cannot be used by another site's
// page.

// ConsoleCSP is the Content-Security-Policy of console answers.
const ConsoleCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

// isProcedure reports whether path names an RPC ("/package.Service/Method").
func isProcedure(path string) bool {
	service, _, ok := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	return ok && strings.Contains(service, ".")
}

// errCrossSite refuses an API call a browser sent from another site's page.
var errCrossSite = connect.NewError(connect.CodePermissionDenied,
	errors.New("API calls from another site's page are refused; call from the console or a non-browser client"))

// securityHeaders sets the headers every answer of the API port carries,
// and refuses API calls from other sites' pages. It runs before the guard,
// so that refusals carry them too.
// Each refusal is counted in refused (ferry_api_requests_refused_total)
// with reason cross_site.
func securityHeaders(next http.Handler, refused *prometheus.CounterVec) http.Handler {
	errs := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		if isProcedure(r.URL.Path) {
			h.Set("Cache-Control", "no-store")
			switch r.Header.Get("Sec-Fetch-Site") {
			case "", "same-origin", "none":
			default: // cross-site, same-site: another origin's page
				refused.WithLabelValues("cross_site").Inc()
				if errs.IsSupported(r) {
					errs.Write(w, r, errCrossSite)
				} else {
					http.Error(w, errCrossSite.Message(), http.StatusForbidden)
				}
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// consoleHandler serves the console's assets with its security headers:
// GET and HEAD of any path that is not a procedure (those are the API's:
// an unknown one is not found, as before the console).
func consoleHandler(assets http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isProcedure(r.URL.Path) || r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", ConsoleCSP)
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=(), usb=(), serial=()")
		// Assets are embedded in the binary: revalidated on each load, so
		// a new ferryd's console is used at once.
		h.Set("Cache-Control", "no-cache")
		assets.ServeHTTP(w, r)
	})
}
