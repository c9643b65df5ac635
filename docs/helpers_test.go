package docs_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Schema ids, as the files in schema/ name themselves.
const (
	predicateSchemaID = "https://github.com/ferryhq/ferry/attestation/report/v1/predicate.schema.json"
	statementSchemaID = "https://github.com/ferryhq/ferry/attestation/report/v1/statement.schema.json"
)

// schemas compiles the committed schemas with a maintained validator,
// asserting formats (date-time) as well.
func schemas(t testing.TB) (predicate, statement *jsonschema.Schema) {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	for id, file := range map[string]string{
		predicateSchemaID: "schema/report-predicate.schema.json",
		statementSchemaID: "schema/report-statement.schema.json",
	} {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if err := c.AddResource(id, doc); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	predicate, err := c.Compile(predicateSchemaID)
	if err != nil {
		t.Fatal(err)
	}
	statement, err = c.Compile(statementSchemaID)
	if err != nil {
		t.Fatal(err)
	}
	return predicate, statement
}

// instance decodes JSON as the validator wants it (numbers kept exact).
func instance(t testing.TB, raw []byte) any {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("instance %s: %v", raw, err)
	}
	return v
}

// pae is DSSE's pre-authentication encoding, written from the DSSE
// specification rather than taken from Ferry's code, as a device in
// another language would write it.
func pae(payloadType string, payload []byte) []byte {
	var b bytes.Buffer
	b.WriteString("DSSEv1 ")
	b.WriteString(strconv.Itoa(len(payloadType)))
	b.WriteByte(' ')
	b.WriteString(payloadType)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(len(payload)))
	b.WriteByte(' ')
	b.Write(payload)
	return b.Bytes()
}

type envelopeSignature struct {
	KeyID string `json:"keyid"`
	Sig   string `json:"sig"`
}

type envelope struct {
	PayloadType string              `json:"payloadType"`
	Payload     string              `json:"payload"`
	Signatures  []envelopeSignature `json:"signatures"`
}

// sealDER signs payload as the docs describe, without Ferry's signing
// code: SHA-256 over the PAE, an ASN.1 DER signature (the form Go's
// crypto.Signer gives for ECDSA), standard base64.
func sealDER(t testing.TB, key crypto.Signer, payload []byte) []byte {
	t.Helper()
	digest := sha256.Sum256(pae("application/vnd.in-toto+json", payload))
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return marshalEnvelope(t, envelope{
		PayloadType: "application/vnd.in-toto+json",
		Payload:     base64.StdEncoding.EncodeToString(payload),
		Signatures:  []envelopeSignature{{Sig: base64.StdEncoding.EncodeToString(sig)}},
	})
}

func marshalEnvelope(t testing.TB, e envelope) []byte {
	t.Helper()
	raw, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// payloadOf returns the payload of an envelope.
func payloadOf(t testing.TB, env []byte) []byte {
	t.Helper()
	var e envelope
	if err := json.Unmarshal(env, &e); err != nil {
		t.Fatal(err)
	}
	p, err := base64.StdEncoding.DecodeString(e.Payload)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// readTestdata returns a file of testdata/protocol.
func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "protocol", name))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
