package docs_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math/big"
	"testing"
	"time"

	"github.com/ferryhq/ferry/attest"
)

// TestSignatureEncodings: envelopes made as protocol.md describes, with
// the standard library's primitives and not Ferry's signing code, are
// accepted or refused by Ferry's verifier (what ferryd runs on every
// report) exactly as the document says.
func TestSignatureEncodings(t *testing.T) {
	payload, err := json.Marshal(attest.NewStatement(attest.Report{
		Device: "dev-1", JobID: "job-1", DesiredVersion: 1, Status: "SUCCEEDED", Time: time.Now().UTC(), Nonce: "n",
		Bundle: &attest.Bundle{TargetPath: "gateway/fw.swu", Length: 10, SHA256: sum},
	}))
	if err != nil {
		t.Fatal(err)
	}
	const payloadType = "application/vnd.in-toto+json"
	msg := pae(payloadType, payload)
	d256 := sha256.Sum256(msg)
	d384 := sha512.Sum384(msg)

	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der := func(k *ecdsa.PrivateKey, digest []byte) []byte {
		sig, err := ecdsa.SignASN1(rand.Reader, k, digest)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	p256DER := der(p256, d256[:])
	must := func(b []byte, err error) []byte {
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	one := func(sig []byte, keyid string) envelope {
		return envelope{PayloadType: payloadType, Payload: base64.StdEncoding.EncodeToString(payload),
			Signatures: []envelopeSignature{{KeyID: keyid, Sig: base64.StdEncoding.EncodeToString(sig)}}}
	}
	b64 := base64.StdEncoding.EncodeToString
	tests := []struct {
		name string
		pub  crypto.PublicKey
		env  []byte
		ok   bool
	}{
		{"ECDSA P-256, SHA-256, ASN.1 DER", &p256.PublicKey, marshalEnvelope(t, one(p256DER, "")), true},
		{"ECDSA P-256, SHA-256, raw r||s (IEEE P1363)", &p256.PublicKey, marshalEnvelope(t, one(rawRS(t, p256DER, 32), "")), true},
		{"ECDSA P-384, SHA-256, DER", &p384.PublicKey, marshalEnvelope(t, one(der(p384, d256[:]), "")), true},
		{"ECDSA P-384, SHA-384 (refused: the hash is always SHA-256)", &p384.PublicKey, marshalEnvelope(t, one(der(p384, d384[:]), "")), false},
		{"Ed25519 over the PAE itself", edKey.Public(), marshalEnvelope(t, one(ed25519.Sign(edKey, msg), "")), true},
		{"RSA PKCS #1 v1.5, SHA-256", &rsaKey.PublicKey, marshalEnvelope(t, one(must(rsa.SignPKCS1v15(rand.Reader, rsaKey, crypto.SHA256, d256[:])), "")), true},
		{"RSA-PSS (refused)", &rsaKey.PublicKey, marshalEnvelope(t, one(must(rsa.SignPSS(rand.Reader, rsaKey, crypto.SHA256, d256[:], nil)), "")), false},
		{"keyid absent", &p256.PublicKey, []byte(`{"payloadType":"` + payloadType + `","payload":"` + b64(payload) + `","signatures":[{"sig":"` + b64(p256DER) + `"}]}`), true},
		{"keyid the key's OpenSSH SHA-256 fingerprint", &p256.PublicKey, marshalEnvelope(t, one(p256DER, sshFingerprint(t, &p256.PublicKey))), true},
		{"keyid anything else (the signature is not counted)", &p256.PublicKey, marshalEnvelope(t, one(p256DER, "dev-1")), false},
		{"a bad signature before the good one", &p256.PublicKey, marshalEnvelope(t, envelope{PayloadType: payloadType, Payload: b64(payload),
			Signatures: []envelopeSignature{{Sig: b64(der(p384, d256[:]))}, {Sig: b64(p256DER)}}}), true},
		{"no signature", &p256.PublicKey, marshalEnvelope(t, envelope{PayloadType: payloadType, Payload: b64(payload), Signatures: []envelopeSignature{}}), false},
		{"signature over the payload, not the PAE", &p256.PublicKey, marshalEnvelope(t, one(der(p256, sha256Of(payload)), "")), false},
		{"another payload type", &p256.PublicKey, marshalEnvelope(t, envelope{PayloadType: "application/json", Payload: b64(payload),
			Signatures: []envelopeSignature{{Sig: b64(must(ecdsa.SignASN1(rand.Reader, p256, sha256Of(pae("application/json", payload)))))}}}), false},
		{"signed by another key", &p384.PublicKey, marshalEnvelope(t, one(p256DER, "")), false},
	}
	for _, tt := range tests {
		_, err := attest.VerifyEnvelope(tt.env, tt.pub)
		if (err == nil) != tt.ok {
			t.Errorf("%s: VerifyEnvelope error %v, want accepted=%v", tt.name, err, tt.ok)
		}
	}
}

func sha256Of(b []byte) []byte {
	d := sha256.Sum256(b)
	return d[:]
}

// rawRS turns an ASN.1 DER ECDSA signature into r||s, each size bytes.
func rawRS(t testing.TB, der []byte, size int) []byte {
	t.Helper()
	var sig struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &sig); err != nil || len(rest) != 0 {
		t.Fatalf("DER signature: %v", err)
	}
	out := make([]byte, 2*size)
	sig.R.FillBytes(out[:size])
	sig.S.FillBytes(out[size:])
	return out
}

// sshFingerprint is OpenSSH's SHA256 fingerprint of a P-256 key (RFC 5656
// public key blob), the only non-empty keyid Ferry's verifier counts.
func sshFingerprint(t testing.TB, pub *ecdsa.PublicKey) string {
	t.Helper()
	point, err := pub.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var blob []byte
	for _, s := range [][]byte{[]byte("ecdsa-sha2-nistp256"), []byte("nistp256"), point} {
		blob = binary.BigEndian.AppendUint32(blob, uint32(len(s)))
		blob = append(blob, s...)
	}
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sha256Of(blob))
}
