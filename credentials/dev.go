package credentials

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// DevOptions describes the development PKI that ferryd creates on first
// start.
type DevOptions struct {
	// TrustDomain of the device SPIFFE IDs.
	TrustDomain string
	// Hosts the server certificate is valid for.
	Hosts []string
	// Devices to issue certificates for.
	Devices []string
	// CertTTL is the lifetime of issued server and device certificates.
	// Expired ones are issued anew at the next start.
	CertTTL time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// DevFiles are the paths of the development PKI.
type DevFiles struct {
	Dir           string
	CACert        string // the device CA, which also signed the server certificate
	CAKey         string
	ServerCert    string
	ServerKey     string
	DevicesDir    string // <id>.pem and <id>.key for every device
	OperatorToken string // the development operator's API key, in clear
	Operators     string // the operator keys file (hashed keys and roles)
	// OperatorCACert and OperatorCAKey are the operator CA, which issues
	// operator client certificates; OperatorCert and OperatorKey are the
	// development admin's certificate (CN dev-admin, OU admin).
	OperatorCACert string
	OperatorCAKey  string
	OperatorCert   string
	OperatorKey    string
}

// DeviceCert returns the certificate and key paths of a development device.
func (f DevFiles) DeviceCert(id string) (cert, key string) {
	return filepath.Join(f.DevicesDir, id+".pem"), filepath.Join(f.DevicesDir, id+".key")
}

// EnsureDev creates what is missing of a development PKI in dir and returns
// its paths. Existing files are kept, so devices and operators keep working
// across restarts; certificates that have expired (or will within a day) are
// issued anew from the same CA.
func EnsureDev(dir string, opts DevOptions) (DevFiles, error) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	f := DevFiles{
		Dir:           dir,
		CACert:        filepath.Join(dir, "ca.pem"),
		CAKey:         filepath.Join(dir, "ca.key"),
		ServerCert:    filepath.Join(dir, "server.pem"),
		ServerKey:     filepath.Join(dir, "server.key"),
		DevicesDir:    filepath.Join(dir, "devices"),
		OperatorToken: filepath.Join(dir, "operator.token"),
		Operators:     filepath.Join(dir, "operators.json"),

		OperatorCACert: filepath.Join(dir, "operator-ca.pem"),
		OperatorCAKey:  filepath.Join(dir, "operator-ca.key"),
		OperatorCert:   filepath.Join(dir, "operator.pem"),
		OperatorKey:    filepath.Join(dir, "operator.key"),
	}
	if err := os.MkdirAll(f.DevicesDir, 0o700); err != nil {
		return f, err
	}
	ca, err := LoadCA(f.CACert, f.CAKey)
	if errors.Is(err, fs.ErrNotExist) {
		if ca, err = NewCA("Ferry development CA", 10*365*24*time.Hour, now()); err == nil {
			err = writePair(f.CACert, f.CAKey, ca.Cert, ca.Key)
		}
	}
	if err != nil {
		return f, fmt.Errorf("development CA: %w", err)
	}
	if needsIssue(f.ServerCert, now()) {
		key, err := NewKey()
		if err != nil {
			return f, err
		}
		cert, err := ca.IssueServer(opts.Hosts, key.Public(), opts.CertTTL, now())
		if err != nil {
			return f, err
		}
		if err := writePair(f.ServerCert, f.ServerKey, cert, key); err != nil {
			return f, fmt.Errorf("server certificate: %w", err)
		}
	}
	for _, id := range opts.Devices {
		certPath, keyPath := f.DeviceCert(id)
		if !needsIssue(certPath, now()) {
			continue
		}
		key, err := NewKey()
		if err != nil {
			return f, err
		}
		cert, err := ca.IssueDevice(opts.TrustDomain, id, key.Public(), opts.CertTTL, now())
		if err != nil {
			return f, err
		}
		if err := writePair(certPath, keyPath, cert, key); err != nil {
			return f, fmt.Errorf("device %s certificate: %w", id, err)
		}
	}
	opCA, err := LoadCA(f.OperatorCACert, f.OperatorCAKey)
	if errors.Is(err, fs.ErrNotExist) {
		if opCA, err = NewCA("Ferry development operator CA", 10*365*24*time.Hour, now()); err == nil {
			err = writePair(f.OperatorCACert, f.OperatorCAKey, opCA.Cert, opCA.Key)
		}
	}
	if err != nil {
		return f, fmt.Errorf("development operator CA: %w", err)
	}
	if needsIssue(f.OperatorCert, now()) {
		key, err := NewKey()
		if err != nil {
			return f, err
		}
		cert, err := opCA.IssueOperator("dev-admin", RoleAdmin, key.Public(), opts.CertTTL, now())
		if err != nil {
			return f, err
		}
		if err := writePair(f.OperatorCert, f.OperatorKey, cert, key); err != nil {
			return f, fmt.Errorf("operator certificate: %w", err)
		}
	}
	if _, err := os.Stat(f.Operators); errors.Is(err, fs.ErrNotExist) {
		key, err := NewAPIKey()
		if err != nil {
			return f, err
		}
		if err := writeFileAtomic(f.OperatorToken, []byte(key+"\n"), 0o600); err != nil {
			return f, err
		}
		keys := []OperatorKey{{Name: "dev-admin", Role: RoleAdmin, KeySHA256: HashAPIKey(key)}}
		if err := WriteOperatorKeys(f.Operators, keys); err != nil {
			return f, err
		}
	}
	return f, nil
}

// needsIssue reports whether the certificate at path needs issuing: it is
// missing, unreadable, or expires within a day.
func needsIssue(path string, now time.Time) bool {
	certs, err := ReadCertFile(path)
	return err != nil || now.Add(24*time.Hour).After(certs[0].NotAfter)
}

func writePair(certPath, keyPath string, cert *x509.Certificate, key crypto.Signer) error {
	if err := WriteKeyFile(keyPath, key); err != nil {
		return err
	}
	return WriteCertFile(certPath, cert)
}
