package server

import (
	"errors"
	"log/slog"
	"net/http"
	"strings"

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
	repo  *tuf.Repository
	authz DownloadAuthorizer
	log   *slog.Logger
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

func (h *tufHandler) deny(w http.ResponseWriter, err error) {
	if httpUnavailable(w, err) { // the check needed the store (errors.go)
		return
	}
	code := http.StatusForbidden
	if connect.CodeOf(err) == connect.CodeUnauthenticated {
		code = http.StatusUnauthorized
		w.Header().Set("WWW-Authenticate", `Bearer realm="ferry"`)
	}
	msg := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) {
		msg = ce.Message()
	}
	http.Error(w, msg, code)
}

func (h *tufHandler) metadata(w http.ResponseWriter, r *http.Request, name string) {
	if err := h.authz.AuthorizeMetadata(r); err != nil {
		h.deny(w, err)
		return
	}
	obj, err := h.repo.OpenMetadata(r.Context(), name)
	if err != nil {
		h.fail(w, r, err)
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
	http.ServeContent(w, r, "", obj.ModTime(), obj)
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
		h.deny(w, err)
		return
	}
	obj, err := h.repo.OpenTarget(r.Context(), path, digest)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	defer obj.Close()
	hdr := w.Header()
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Cache-Control", "private, max-age=31536000, immutable")
	hdr.Set("ETag", `"sha256:`+digest+`"`)
	http.ServeContent(w, r, "", obj.ModTime(), obj)
}

func (h *tufHandler) fail(w http.ResponseWriter, r *http.Request, err error) {
	if tuf.KindOf(err) == tuf.KindNotFound {
		http.NotFound(w, r)
		return
	}
	if httpUnavailable(w, err) { // errors.go
		h.log.WarnContext(r.Context(), "repository read", "path", r.URL.Path, "err", err)
		return
	}
	h.log.ErrorContext(r.Context(), "repository read", "path", r.URL.Path, "err", err)
	http.Error(w, "internal error", http.StatusInternalServerError)
}
