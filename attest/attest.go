// Package attest is Ferry's signed device report: an in-toto statement in a
// DSSE envelope, signed with the device's key.
//
// The statement's subject is what the device runs after the job (the
// installed bundle's SHA-256; for a device without a bundle, the digest of
// its configuration). The predicate names the device, the job, the desired
// version it answers, how the job ended, when, and the nonce the server
// gave the stream, so that a report cannot be replayed on another stream.
//
// Sign is what a device does; Verify is what ferryd does before it records
// a report and what anyone can do later with the stored envelope and the
// device's certificate chain.
package attest

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"

	"github.com/ferryhq/ferry/credentials"
)

// Types in the envelope and the statement.
const (
	PayloadType   = "application/vnd.in-toto+json"
	StatementType = "https://in-toto.io/Statement/v1"
	PredicateType = "https://github.com/ferryhq/ferry/attestation/report/v1"
)

// MaxEnvelopeBytes bounds what Verify reads.
const MaxEnvelopeBytes = 64 << 10

// ErrInvalid: the envelope is malformed, its signature does not verify, or
// its signer is not who it must be. The wrapped message says which.
var ErrInvalid = errors.New("invalid attestation")

// Statement is an in-toto statement (v1) with Ferry's report predicate.
type Statement struct {
	Type          string    `json:"_type"`
	Subject       []Subject `json:"subject"`
	PredicateType string    `json:"predicateType"`
	Predicate     Report    `json:"predicate"`
}

// Subject is an in-toto resource descriptor.
type Subject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

// Report is the predicate: what the device says about the job.
type Report struct {
	Device         string    `json:"device"`
	JobID          string    `json:"jobId"`
	DesiredVersion uint64    `json:"desiredVersion"`
	Status         string    `json:"status"`
	Step           string    `json:"step,omitempty"`
	ErrorCode      string    `json:"errorCode,omitempty"`
	Message        string    `json:"message,omitempty"`
	Time           time.Time `json:"time"`
	Nonce          string    `json:"nonce"`
	// What the device runs after the job.
	Bundle *Bundle           `json:"bundle,omitempty"`
	Config map[string]string `json:"config,omitempty"`
}

// Bundle names the installed bundle.
type Bundle struct {
	TargetPath string `json:"targetPath"`
	Length     uint64 `json:"length"`
	SHA256     string `json:"sha256"`
}

// NewStatement wraps a report in a statement whose subject is what the
// device runs.
func NewStatement(r Report) Statement {
	var subject Subject
	if r.Bundle != nil {
		subject = Subject{Name: r.Bundle.TargetPath, Digest: map[string]string{"sha256": r.Bundle.SHA256}}
	} else {
		subject = Subject{Name: "config", Digest: map[string]string{"sha256": ConfigDigest(r.Config)}}
	}
	return Statement{Type: StatementType, Subject: []Subject{subject}, PredicateType: PredicateType, Predicate: r}
}

// ConfigDigest is the SHA-256 of a configuration: its keys in order, each
// key and value followed by a NUL byte.
func ConfigDigest(config map[string]string) string {
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(config)) {
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write([]byte(config[k]))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Sign returns the DSSE envelope (JSON) of st signed with key.
func Sign(key crypto.Signer, st Statement) ([]byte, error) {
	payload, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	s, err := signature.LoadSigner(key, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("attestation signer: %w", err)
	}
	return dsse.WrapSigner(s, PayloadType).SignMessage(bytes.NewReader(payload))
}

// Verify checks an envelope against the device certificate chain (DER,
// leaf first) that must chain to roots: the DSSE signature by the leaf's
// key, the statement's types and subject, the chain at time at (when at is
// zero, at the time the statement gives, for verifying old reports whose
// short-lived certificates have since expired), the leaf's device identity
// in trustDomain, and that the predicate names that device. It returns the
// statement and the verified chain.
func Verify(envelope []byte, chain [][]byte, roots *x509.CertPool, trustDomain string, at time.Time) (Statement, []*x509.Certificate, error) {
	if len(envelope) > MaxEnvelopeBytes {
		return Statement{}, nil, fmt.Errorf("%w: envelope of %d bytes, at most %d", ErrInvalid, len(envelope), MaxEnvelopeBytes)
	}
	if len(chain) == 0 {
		return Statement{}, nil, fmt.Errorf("%w: no certificate chain", ErrInvalid)
	}
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return Statement{}, nil, fmt.Errorf("%w: certificate %d: %v", ErrInvalid, i, err)
		}
		certs[i] = c
	}
	st, err := VerifyEnvelope(envelope, certs[0].PublicKey)
	if err != nil {
		return Statement{}, nil, err
	}
	if at.IsZero() {
		at = st.Predicate.Time
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	verified, err := certs[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return Statement{}, nil, fmt.Errorf("%w: certificate chain: %v", ErrInvalid, err)
	}
	if err := checkDevice(st, certs[0], trustDomain); err != nil {
		return Statement{}, nil, err
	}
	return st, verified[0], nil
}

// VerifyByDevice checks an envelope signed by the key of leaf, a device
// certificate whose chain the caller has already verified (ferryd: in the
// stream's TLS handshake): the DSSE signature, the statement, and that the
// predicate names leaf's device.
func VerifyByDevice(envelope []byte, leaf *x509.Certificate, trustDomain string) (Statement, error) {
	if len(envelope) > MaxEnvelopeBytes {
		return Statement{}, fmt.Errorf("%w: envelope of %d bytes, at most %d", ErrInvalid, len(envelope), MaxEnvelopeBytes)
	}
	st, err := VerifyEnvelope(envelope, leaf.PublicKey)
	if err != nil {
		return Statement{}, err
	}
	return st, checkDevice(st, leaf, trustDomain)
}

func checkDevice(st Statement, leaf *x509.Certificate, trustDomain string) error {
	device, err := credentials.DeviceID(trustDomain, leaf)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if st.Predicate.Device != device {
		return fmt.Errorf("%w: signed by device %q about device %q", ErrInvalid, device, st.Predicate.Device)
	}
	return nil
}

// VerifyEnvelope checks the DSSE signature with pub and decodes the
// statement. It does not look at who pub belongs to: Verify does.
func VerifyEnvelope(envelope []byte, pub crypto.PublicKey) (Statement, error) {
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return Statement{}, fmt.Errorf("%w: key: %v", ErrInvalid, err)
	}
	var payload []byte
	dv := dsse.WrapVerifier(v, dsse.WithExpectedPayloadType(PayloadType), dsse.WithDecodedPayload(&payload))
	if err := dv.VerifySignature(bytes.NewReader(envelope), nil); err != nil {
		return Statement{}, fmt.Errorf("%w: signature: %v", ErrInvalid, err)
	}
	var st Statement
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return Statement{}, fmt.Errorf("%w: statement: %v", ErrInvalid, err)
	}
	if st.Type != StatementType || st.PredicateType != PredicateType {
		return Statement{}, fmt.Errorf("%w: statement type %q, predicate type %q", ErrInvalid, st.Type, st.PredicateType)
	}
	want := NewStatement(st.Predicate).Subject
	if len(st.Subject) != 1 || st.Subject[0].Name != want[0].Name || !maps.Equal(st.Subject[0].Digest, want[0].Digest) {
		return Statement{}, fmt.Errorf("%w: subject does not name what the device runs", ErrInvalid)
	}
	return st, nil
}
