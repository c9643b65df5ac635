package credentials

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// KeyPairReloader serves a TLS certificate from files and picks up a
// replaced certificate without a restart: on a handshake, at most once per
// check interval, it looks at the files' modification times and loads them
// again when they changed. A pair that fails to load keeps the previous
// certificate in service (LastError says why). It is safe for concurrent
// use.
type KeyPairReloader struct {
	certFile, keyFile string
	interval          time.Duration

	mu        sync.Mutex
	cert      *tls.Certificate
	certMod   time.Time
	keyMod    time.Time
	checkedAt time.Time
	lastErr   error
}

// NewKeyPairReloader loads the pair and returns a reloader that checks the
// files at most once per interval.
func NewKeyPairReloader(certFile, keyFile string, interval time.Duration) (*KeyPairReloader, error) {
	r := &KeyPairReloader{certFile: certFile, keyFile: keyFile, interval: interval}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload loads the pair now if the files changed since the last load.
func (r *KeyPairReloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reloadLocked()
}

func (r *KeyPairReloader) reloadLocked() error {
	r.checkedAt = time.Now()
	cs, err := os.Stat(r.certFile)
	if err != nil {
		return r.fail(err)
	}
	ks, err := os.Stat(r.keyFile)
	if err != nil {
		return r.fail(err)
	}
	if r.cert != nil && cs.ModTime().Equal(r.certMod) && ks.ModTime().Equal(r.keyMod) {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return r.fail(err)
	}
	r.cert, r.certMod, r.keyMod, r.lastErr = &cert, cs.ModTime(), ks.ModTime(), nil
	return nil
}

func (r *KeyPairReloader) fail(err error) error {
	r.lastErr = fmt.Errorf("serving certificate: %w", err)
	return r.lastErr
}

// LastError returns the error of the last failed load, or nil.
func (r *KeyPairReloader) LastError() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// GetCertificate is a tls.Config.GetCertificate.
func (r *KeyPairReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checkedAt) >= r.interval {
		_ = r.reloadLocked() // keep serving the last good pair
	}
	return r.cert, nil
}
