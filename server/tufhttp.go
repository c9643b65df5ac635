package server

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/tuf"
)

// TUF metadata and targets are served on the API port under these paths,
// as a TUF client expects them: <metadata>/timestamp.json,
// <metadata>/N.root.json, <metadata>/N.snapshot.json, <metadata>/N.<role>.json
// and <targets>/<dir>/<sha256>.<name> (consistent snapshots).
const (
	tufMetadataPath = "/tuf/metadata/"
	tufTargetsPath  = "/tuf/targets/"
)

// DownloadAuthorizer decides who may fetch from the repository over HTTPS.
// Nothing on the API port is anonymous except health, so every metadata
// and target request goes through it. It returns nil to allow; otherwise
// an error whose connect.Code is Unauthenticated (answered 401) or anything
// else (answered 403). Implementations must be safe for concurrent use.
//
// The request's TLS state carries a device's verified client certificate,
// if it sent one (the API port verifies certificates against the device CA
// when given). Download tokens bound to a device certificate plug in here.
type DownloadAuthorizer interface {
	// AuthorizeMetadata decides whether r may fetch TUF metadata.
	AuthorizeMetadata(r *http.Request) error
	// AuthorizeTarget decides whether r may download the target at path
	// whose SHA-256 (hex) is sha256, named in the URL; whether such a
	// target is published is checked after it allows.
	AuthorizeTarget(r *http.Request, path, sha256 string) error
}

// tufHandler serves the repository's metadata and targets.
type tufHandler struct {
	repo    *tuf.Repository
	authz   DownloadAuthorizer
	log     *slog.Logger
	metrics *metrics
}

func (h *tufHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if name, ok := strings.CutPrefix(r.URL.Path, tufMetadataPath); ok {
		h.metadata(w, r, name)
		return
	}
	if name, ok := strings.CutPrefix(r.URL.Path, tufTargetsPath); ok {
		h.target(w, r, name)
		return
	}
	http.NotFound(w, r)
}

func (h *tufHandler) deny(w http.ResponseWriter, kind string, err error) {
	if httpUnavailable(w, err) { // the check needed the store (errors.go)
		h.metrics.downloadRefused.WithLabelValues(kind, "unavailable").Inc()
		return
	}
	code, reason := http.StatusForbidden, "forbidden"
	if connect.CodeOf(err) == connect.CodeUnauthenticated {
		code, reason = http.StatusUnauthorized, "unauthenticated"
		w.Header().Set("WWW-Authenticate", `Bearer realm="ferry"`)
	}
	h.metrics.downloadRefused.WithLabelValues(kind, reason).Inc()
	msg := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) {
		msg = ce.Message()
	}
	http.Error(w, msg, code)
}

func (h *tufHandler) metadata(w http.ResponseWriter, r *http.Request, name string) {
	if err := h.authz.AuthorizeMetadata(r); err != nil {
		h.deny(w, "metadata", err)
		return
	}
	obj, err := h.repo.OpenMetadata(r.Context(), name)
	if err != nil {
		h.fail(w, r, "metadata", err)
		return
	}
	defer obj.Close()
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("X-Content-Type-Options", "nosniff")
	if name == "timestamp.json" {
		// Changes with every publish and re-signing: always revalidate.
		hdr.Set("Cache-Control", "private, no-cache")
	} else {
		// Versioned names never change content.
		hdr.Set("Cache-Control", "private, max-age=31536000, immutable")
		hdr.Set("ETag", `"`+name+`"`)
	}
	h.serve(w, r, "metadata", obj)
}

func (h *tufHandler) target(w http.ResponseWriter, r *http.Request, name string) {
	path, digest, err := tuf.ParseHashedTargetName(name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	// Authorization comes first, so that whether a target exists is told
	// only to those allowed to fetch it.
	if err := h.authz.AuthorizeTarget(r, path, digest); err != nil {
		h.deny(w, "target", err)
		return
	}
	obj, err := h.repo.OpenTarget(r.Context(), path, digest)
	if err != nil {
		h.fail(w, r, "target", err)
		return
	}
	defer obj.Close()
	hdr := w.Header()
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Cache-Control", "private, max-age=31536000, immutable")
	hdr.Set("ETag", `"sha256:`+digest+`"`)
	h.serve(w, r, "target", obj)
}

func (h *tufHandler) fail(w http.ResponseWriter, r *http.Request, kind string, err error) {
	if tuf.KindOf(err) == tuf.KindNotFound {
		h.metrics.downloadRefused.WithLabelValues(kind, "not_found").Inc()
		http.NotFound(w, r)
		return
	}
	if httpUnavailable(w, err) { // errors.go
		h.metrics.downloadRefused.WithLabelValues(kind, "unavailable").Inc()
		h.log.WarnContext(r.Context(), "repository read", "path", r.URL.Path, "err", err)
		return
	}
	h.metrics.downloadRefused.WithLabelValues(kind, "internal").Inc()
	h.log.ErrorContext(r.Context(), "repository read", "path", r.URL.Path, "err", err)
	http.Error(w, "internal error", http.StatusInternalServerError)
}

// serve sends obj (whole, a range, or not modified) and counts it.
func (h *tufHandler) serve(w http.ResponseWriter, r *http.Request, kind string, obj tuf.Object) {
	cw := &countingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, "", obj.ModTime(), obj)
	h.metrics.downloads.WithLabelValues(kind).Inc()
	h.metrics.downloadBytes.WithLabelValues(kind).Add(float64(cw.n))
	if cw.status == http.StatusPartialContent {
		h.metrics.downloadRanges.Inc()
	}
}

// countingWriter remembers a response's status and counts its body bytes.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// copyBuffers are ReadFrom's buffers: a target is read and written in
// 256 KiB pieces rather than io.Copy's 32 KiB, a fraction of the reads,
// writes and HTTP/2 flushes per bundle (the TLS connection rules out
// sendfile).
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// ReadFrom implements io.ReaderFrom, which http.ServeContent's copy uses.
func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	var total int64
	for {
		n, rerr := io.ReadFull(r, *buf)
		if n > 0 {
			w, werr := c.Write((*buf)[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
