package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"

	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/store"
)

// BundleFormat names the bundle's layout.
const BundleFormat = "ferry-audit-bundle/v1"

// PayloadType is the DSSE payload type of a bundle's signature.
const PayloadType = "application/vnd.ferry.audit-bundle.v1+json"

// ErrInvalid is what Verify's errors match (errors.Is).
var ErrInvalid = errors.New("audit bundle does not verify")

// Bundle is an exported span of the audit trail.
type Bundle struct {
	Content Content `json:"content"`
	// Envelope is the DSSE envelope, by the audit key, of the Statement
	// that names the digest of Content.
	Envelope json.RawMessage `json:"envelope"`
	// PublicKey is the audit key's public key (PEM).
	PublicKey string `json:"public_key"`
}

// Content is what a bundle's signature covers.
type Content struct {
	Format     string    `json:"format"`
	Since      time.Time `json:"since"`
	Until      time.Time `json:"until"`
	ExportedAt time.Time `json:"exported_at"`
	// Chains holds every chain that has entries in the span.
	Chains []Chain `json:"chains"`
	// Attestations are the devices' signed reports of the jobs that ended
	// in the span.
	Attestations []DeviceAttestation `json:"attestations,omitempty"`
}

// Chain is one hash chain's part of a bundle.
type Chain struct {
	Chain int `json:"chain"`
	// Anchor is the entry just before the span (nil when the span starts
	// the chain, or the anchor was pruned: then the first entry's Prev is
	// taken as given).
	Anchor  *store.AuditEntry  `json:"anchor,omitempty"`
	Entries []store.AuditEntry `json:"entries"`
}

// DeviceAttestation is a device's attestation in a bundle.
type DeviceAttestation struct {
	DeviceID string `json:"device_id"`
	store.Attestation
}

// Statement is the signed payload: the SHA-256 of the bundle's content.
type Statement struct {
	Format string `json:"format"`
	SHA256 string `json:"sha256"`
}

// Sources is what an export reads.
type Sources struct {
	Audit store.Audit
	// Devices, if set, gives the attestations of jobs that ended in the
	// span (found in the devices' histories).
	Devices store.Devices
}

// Export builds and signs the bundle of [since, until).
func Export(ctx context.Context, src Sources, signer signature.Signer, since, until, now time.Time) ([]byte, error) {
	if !until.IsZero() && !since.Before(until) {
		return nil, fmt.Errorf("export: since %s is not before until %s", since.Format(time.RFC3339), until.Format(time.RFC3339))
	}
	c := Content{Format: BundleFormat, Since: since.UTC(), Until: until.UTC(), ExportedAt: now.UTC(), Chains: []Chain{}}
	for n := range store.AuditChains {
		anchor, entries, err := src.Audit.AuditSpan(ctx, n, since, until)
		if err != nil {
			return nil, fmt.Errorf("export chain %d: %w", n, err)
		}
		if len(entries) == 0 {
			continue
		}
		ch := Chain{Chain: n, Entries: entries}
		if anchor.Seq > 0 {
			ch.Anchor = &anchor
		}
		c.Chains = append(c.Chains, ch)
	}
	if src.Devices != nil {
		atts, err := attestations(ctx, src.Devices, since, until)
		if err != nil {
			return nil, fmt.Errorf("export attestations: %w", err)
		}
		c.Attestations = atts
	}
	digest, err := contentDigest(c)
	if err != nil {
		return nil, err
	}
	payload, err := json.Marshal(Statement{Format: BundleFormat, SHA256: digest})
	if err != nil {
		return nil, err
	}
	env, err := dsse.WrapSigner(signer, PayloadType).SignMessage(bytes.NewReader(payload))
	if err != nil {
		return nil, fmt.Errorf("sign bundle: %w", err)
	}
	pub, err := signer.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	pemKey, err := cryptoutils.MarshalPublicKeyToPEM(pub)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	return json.MarshalIndent(Bundle{Content: c, Envelope: env, PublicKey: string(pemKey)}, "", "  ")
}

// attestations walks the fleet for jobs that ended in [since, until) and
// returns their stored attestations.
func attestations(ctx context.Context, devices store.Devices, since, until time.Time) ([]DeviceAttestation, error) {
	var out []DeviceAttestation
	after := ""
	for {
		page, err := devices.ListDevices(ctx, store.ListOptions{After: after, Limit: 500})
		if err != nil {
			return nil, err
		}
		for _, d := range page {
			events, err := devices.ListEvents(ctx, d.ID, 0, store.MaxEvents)
			if err != nil {
				return nil, err
			}
			seen := map[string]bool{}
			for _, e := range events {
				if e.Kind != "job_ended" || e.JobID == "" || seen[e.JobID] || e.Time.Before(since) || (!until.IsZero() && !e.Time.Before(until)) {
					continue
				}
				seen[e.JobID] = true
				a, err := devices.GetAttestation(ctx, d.ID, e.JobID)
				if errors.Is(err, store.ErrNoAttestation) {
					continue
				}
				if err != nil {
					return nil, err
				}
				out = append(out, DeviceAttestation{DeviceID: d.ID, Attestation: a})
			}
		}
		if len(page) < 500 {
			return out, nil
		}
		after = page[len(page)-1].ID
	}
}

func contentDigest(c Content) (string, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// Report is what Verify found.
type Report struct {
	Chains, Entries, Attestations int
	// KeyFromBundle is true when the signature was checked with the key
	// the bundle carries (no key was given): it proves integrity, not who
	// signed.
	KeyFromBundle bool
}

// Verify checks a bundle offline: the DSSE signature (with pub, or the
// bundle's own key when pub is nil), the content digest, each chain's links
// from its anchor, and each attestation's signature by its device's
// certificate. The first failure says where.
func Verify(raw []byte, pub crypto.PublicKey) (Report, error) {
	var b Bundle
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return Report{}, fmt.Errorf("%w: not a bundle: %v", ErrInvalid, err)
	}
	rep := Report{}
	if pub == nil {
		k, err := cryptoutils.UnmarshalPEMToPublicKey([]byte(b.PublicKey))
		if err != nil {
			return rep, fmt.Errorf("%w: the bundle's public key: %v", ErrInvalid, err)
		}
		pub, rep.KeyFromBundle = k, true
	}
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return rep, fmt.Errorf("%w: key: %v", ErrInvalid, err)
	}
	var payload []byte
	dv := dsse.WrapVerifier(v, dsse.WithExpectedPayloadType(PayloadType), dsse.WithDecodedPayload(&payload))
	if err := dv.VerifySignature(bytes.NewReader(b.Envelope), nil); err != nil {
		return rep, fmt.Errorf("%w: signature: %v", ErrInvalid, err)
	}
	var st Statement
	if err := json.Unmarshal(payload, &st); err != nil || st.Format != BundleFormat {
		return rep, fmt.Errorf("%w: signed statement is not a %s statement", ErrInvalid, BundleFormat)
	}
	// Links and attestations first, so that an edit says what it touched;
	// then the digest catches anything else that changed after signing.
	for _, ch := range b.Content.Chains {
		if err := verifyChain(ch); err != nil {
			return rep, err
		}
		rep.Chains++
		rep.Entries += len(ch.Entries)
	}
	for i, a := range b.Content.Attestations {
		if len(a.CertificateChain) == 0 {
			return rep, fmt.Errorf("%w: attestation %d (device %s, job %s) has no certificate", ErrInvalid, i, a.DeviceID, a.JobID)
		}
		leaf, err := x509.ParseCertificate(a.CertificateChain[0])
		if err != nil {
			return rep, fmt.Errorf("%w: attestation %d (device %s, job %s): certificate: %v", ErrInvalid, i, a.DeviceID, a.JobID, err)
		}
		st, err := attest.VerifyEnvelope(a.Envelope, leaf.PublicKey)
		if err != nil {
			return rep, fmt.Errorf("%w: attestation %d (device %s, job %s): %v", ErrInvalid, i, a.DeviceID, a.JobID, err)
		}
		if st.Predicate.Device != a.DeviceID || st.Predicate.JobID != a.JobID {
			return rep, fmt.Errorf("%w: attestation %d is filed under device %s, job %s, but reports device %s, job %s",
				ErrInvalid, i, a.DeviceID, a.JobID, st.Predicate.Device, st.Predicate.JobID)
		}
		rep.Attestations++
	}
	digest, err := contentDigest(b.Content)
	if err != nil {
		return rep, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if digest != st.SHA256 {
		return rep, fmt.Errorf("%w: the content's SHA-256 %s is not the signed %s: the bundle was changed after export", ErrInvalid, digest, st.SHA256)
	}
	return rep, nil
}

// verifyChain checks one chain's links, from its anchor.
func verifyChain(ch Chain) error {
	var prev *store.AuditEntry
	if ch.Anchor != nil {
		if got := store.AuditHash(*ch.Anchor); got != ch.Anchor.Hash {
			return fmt.Errorf("%w: chain %d: anchor entry %d was edited (its hash is %s, it says %s)", ErrInvalid, ch.Chain, ch.Anchor.Seq, got, ch.Anchor.Hash)
		}
		prev = ch.Anchor
	}
	// Order first: a swap would otherwise show as a gap.
	for i := 1; i < len(ch.Entries); i++ {
		if a, b := ch.Entries[i-1].Seq, ch.Entries[i].Seq; b <= a {
			return fmt.Errorf("%w: chain %d: entry %d comes after entry %d: entries were reordered", ErrInvalid, ch.Chain, b, a)
		}
	}
	for i, e := range ch.Entries {
		if e.Chain != ch.Chain {
			return fmt.Errorf("%w: chain %d: entry %d (position %d) belongs to chain %d", ErrInvalid, ch.Chain, e.Seq, i, e.Chain)
		}
		if got := store.AuditHash(e); got != e.Hash {
			return fmt.Errorf("%w: chain %d: entry %d was edited (its hash is %s, it says %s)", ErrInvalid, ch.Chain, e.Seq, got, e.Hash)
		}
		if prev == nil {
			if e.Seq == 1 && e.Prev != "" {
				return fmt.Errorf("%w: chain %d: entry 1 names a predecessor", ErrInvalid, ch.Chain)
			}
			prev = &ch.Entries[i]
			continue
		}
		switch {
		case e.Seq <= prev.Seq: // only an anchor can be out of order here
			return fmt.Errorf("%w: chain %d: entry %d comes after entry %d: entries were reordered", ErrInvalid, ch.Chain, e.Seq, prev.Seq)
		case e.Seq > prev.Seq+1:
			return fmt.Errorf("%w: chain %d: entries %d to %d are missing after entry %d: entries were removed", ErrInvalid, ch.Chain, prev.Seq+1, e.Seq-1, prev.Seq)
		case e.Prev != prev.Hash:
			return fmt.Errorf("%w: chain %d: entry %d does not link to entry %d (prev %s, entry %d's hash %s)", ErrInvalid, ch.Chain, e.Seq, prev.Seq, e.Prev, prev.Seq, prev.Hash)
		}
		prev = &ch.Entries[i]
	}
	return nil
}
