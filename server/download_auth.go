package server

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/tuf"
)

// downloadTokenParam is the query parameter of a pre-signed URL.
const downloadTokenParam = "token"

// tokenDownloadAuthorizer is ferryd's DownloadAuthorizer. Targets need one
// of:
//   - a download token as "Authorization: Bearer <token>", bound to the TLS
//     client certificate the request came over (RFC 8705 cnf.x5t#S256);
//   - a pre-signed URL token in the "token" query parameter;
//   - an operator API key or operator certificate (any role).
//
// It checks signature, expiry, target, digest, binding, revocation and
// single use. A valid token works for any number of Range requests until
// it expires, unless it is single-use. Metadata needs a device certificate
// of an unrevoked device, or an operator credential.
//
// On metadata, a device certificate is enough whatever else comes with
// it: generic TUF clients send the download token (or other headers) on
// every request, so an Authorization header that is not an API key is
// ignored. An API key ("Bearer ferry_…") is a claim to be an operator and
// is checked as one, certificate or not: a wrong one is refused (401), so
// a mistyped or withdrawn operator key is reported instead of masked.
//
// A patch target (custom metadata "delta") is authorized as its signed
// result: a device's token for its desired bundle also fetches a patch
// whose delta.result names that bundle's path and SHA-256, and nothing
// else does.
type tokenDownloadAuthorizer struct {
	creds *credentialsState
	auth  Authenticator
	// repo finds patch targets; nil serves no patch by its result's token.
	repo *tuf.Repository
}

var _ DownloadAuthorizer = tokenDownloadAuthorizer{}

// AuthorizeMetadata implements DownloadAuthorizer.
func (a tokenDownloadAuthorizer) AuthorizeMetadata(r *http.Request) error {
	if !presentsAPIKey(r.Header) && r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		if id, ok := a.device(r); ok {
			if a.creds.revoked.Revoked(id) {
				return connect.NewError(connect.CodePermissionDenied, errors.New("the device's certificate was revoked"))
			}
			return nil
		}
	}
	_, err := authorizeRequest(a.auth, a.creds.operatorCerts, r.Header, r.TLS, credentials.RoleViewer)
	return err
}

// presentsAPIKey reports whether h carries an operator API key as its
// bearer credential.
func presentsAPIKey(h http.Header) bool {
	key, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	return ok && credentials.LooksLikeAPIKey(strings.TrimSpace(key))
}

// device returns the id of a verified device certificate on r.
func (a tokenDownloadAuthorizer) device(r *http.Request) (string, bool) {
	chain := r.TLS.PeerCertificates
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots: a.creds.deviceRoots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return "", false
	}
	id, err := credentials.DeviceID(a.creds.cfg.TrustDomain, chain[0])
	return id, err == nil
}

// AuthorizeTarget implements DownloadAuthorizer.
func (a tokenDownloadAuthorizer) AuthorizeTarget(r *http.Request, path, sha256 string) error {
	bearer, hasBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	token := strings.TrimSpace(bearer)
	if !hasBearer {
		token = r.URL.Query().Get(downloadTokenParam)
	}
	if token == "" || credentials.LooksLikeAPIKey(token) {
		if token == "" && r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			if _, isDevice := a.device(r); isDevice {
				return connect.NewError(connect.CodeUnauthenticated,
					errors.New("a download token is required: ask CredentialService.IssueDownloadToken and send \"Authorization: Bearer <token>\""))
			}
		}
		// An operator may read any target.
		_, err := authorizeRequest(a.auth, a.creds.operatorCerts, r.Header, r.TLS, credentials.RoleViewer)
		return err
	}
	req := credentials.DownloadRequest{Target: path, SHA256: sha256, Claimant: newClaimant()}
	if result, ok := a.patchResult(r, path, sha256); ok {
		req.Target, req.SHA256 = result.Path, result.SHA256
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		req.ClientCert = r.TLS.PeerCertificates[0]
	}
	g, err := a.creds.downloads.Authorize(r.Context(), token, req)
	if err != nil {
		code, msg := classify(err)
		if code == connect.CodeUnavailable {
			return connectError(r.Context(), a.creds.log, err) // with the retry hint
		}
		if code == connect.CodeInternal {
			a.creds.log.ErrorContext(r.Context(), "download authorization", "err", err)
		} else {
			a.creds.log.InfoContext(r.Context(), "download refused", "target", path, "device", g.DeviceID, "reason", err)
		}
		return connect.NewError(code, errors.New(msg))
	}
	return nil
}

// patchResult returns the signed result of the patch target at path with
// that SHA-256, if it is one. Whether the target exists shows only in
// what the token is checked against, not in the answer.
func (a tokenDownloadAuthorizer) patchResult(r *http.Request, path, sha256 string) (tuf.DeltaRef, bool) {
	if a.repo == nil || !strings.Contains(path, ".delta-") {
		return tuf.DeltaRef{}, false
	}
	b, err := a.repo.FindBundle(r.Context(), path)
	if err != nil || b.SHA256() != sha256 || b.Delta == nil {
		return tuf.DeltaRef{}, false
	}
	return b.Delta.Result, true
}

func newClaimant() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
