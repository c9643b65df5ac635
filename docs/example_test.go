package docs_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/attest"
)

var update = flag.Bool("update", false, "sign the worked example of protocol.md anew and rewrite its files and blocks")

// exampleReport is the report of protocol.md's worked example. Its time
// is only text in the payload: no clock compares it.
func exampleReport() attest.Report {
	return attest.Report{
		Device:         "gw-0042",
		JobID:          "job-5f0c3e9a1b7d2c4e6a80",
		DesiredVersion: 7,
		Status:         "SUCCEEDED",
		Time:           time.Date(2026, 3, 14, 9, 26, 53, 0, time.UTC),
		Nonce:          "Yx0bVw2K8dQm4Tz1pR7sLg",
		Bundle: &attest.Bundle{
			TargetPath: "gateway/firmware-2.1.0.swu",
			Length:     8388608,
			SHA256:     "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
		},
		Config: map[string]string{"log.level": "info"},
	}
}

// The files of the worked example, each shown verbatim in protocol.md
// after a line <!-- testdata/protocol/NAME -->.
var exampleFiles = []string{"device.pub.pem", "statement.json", "pae.txt", "signature.txt", "envelope.json"}

// TestProtocolExample keeps protocol.md's worked example true: the
// statement is what Ferry marshals for the example report, the PAE is
// DSSE's encoding of it, the envelope carries exactly that payload and
// verifies with the committed public key through Ferry's verifier (what
// ferryd runs on every report), the signature's breakdown is the
// envelope's, and the document shows every file verbatim.
//
// ECDSA signatures are randomized, so the envelope is committed rather
// than recomputed. go test ./docs -run TestProtocolExample -update signs
// it anew with the committed test key and rewrites the files and the
// document's blocks.
func TestProtocolExample(t *testing.T) {
	if *update {
		writeExample(t)
	}
	statement, err := json.Marshal(attest.NewStatement(exampleReport()))
	if err != nil {
		t.Fatal(err)
	}
	if got := readTestdata(t, "statement.json"); !bytes.Equal(got, statement) {
		t.Errorf("statement.json is not the example report's statement:\n got %s\nwant %s", got, statement)
	}
	_, statementSchema := schemas(t)
	if err := statementSchema.Validate(instance(t, statement)); err != nil {
		t.Errorf("the example statement is not valid under the schema: %v", err)
	}
	wantPAE := pae(attest.PayloadType, statement)
	if got := readTestdata(t, "pae.txt"); !bytes.Equal(got, wantPAE) {
		t.Errorf("pae.txt is not the statement's PAE:\n got %q\nwant %q", got, wantPAE)
	}

	key := readKey(t)
	pub := readPublicKey(t)
	if !key.PublicKey.Equal(pub) {
		t.Fatal("device.pub.pem is not the public key of device.key.pem")
	}
	env := readTestdata(t, "envelope.json")
	if !bytes.Equal(payloadOf(t, env), statement) {
		t.Errorf("the envelope's payload is not statement.json")
	}
	st, err := attest.VerifyEnvelope(env, pub)
	if err != nil {
		t.Fatalf("the example envelope does not verify: %v", err)
	}
	if st.Predicate.Device != "gw-0042" || st.Subject[0].Name != "gateway/firmware-2.1.0.swu" {
		t.Errorf("verified statement %+v", st)
	}
	if got, want := string(readTestdata(t, "signature.txt")), signatureBreakdown(t, env, wantPAE); got != want {
		t.Errorf("signature.txt is not the envelope's signature:\n got %s\nwant %s", got, want)
	}

	doc, err := os.ReadFile("protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	// The numbers and digests the text states.
	for _, want := range []string{
		fmt.Sprintf("`%d` is the payload type's length in bytes, `%d` the\npayload's", len(attest.PayloadType), len(statement)),
		"`" + configDigest(t, map[string]string{"log.level": "debug"}) + "`",
		"`" + configDigest(t, nil) + "`",
		"`" + sha256Hex("log.level\x00debug\x00") + "`",
	} {
		if !bytes.Contains(doc, []byte(want)) {
			t.Errorf("protocol.md does not say %q", want)
		}
	}
	for _, name := range exampleFiles {
		block := exampleBlock(name)
		m := block.FindSubmatch(doc)
		if m == nil {
			t.Errorf("protocol.md has no block after <!-- testdata/protocol/%s -->", name)
			continue
		}
		if want := strings.TrimSuffix(string(readTestdata(t, name)), "\n"); string(m[2]) != want {
			t.Errorf("protocol.md's %s differs from testdata/protocol/%s (go test ./docs -run TestProtocolExample -update)", name, name)
		}
	}
}

// configDigest is the configuration digest as protocol.md defines it,
// written from the text; it must agree with Ferry's.
func configDigest(t testing.TB, config map[string]string) string {
	t.Helper()
	var b []byte
	for _, k := range slices.Sorted(maps.Keys(config)) {
		b = append(append(append(append(b, k...), 0), config[k]...), 0)
	}
	if got := sha256Hex(string(b)); got != attest.ConfigDigest(config) {
		t.Errorf("protocol.md's configuration digest %s, Ferry's %s", got, attest.ConfigDigest(config))
	}
	return sha256Hex(string(b))
}

func sha256Hex(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }

// exampleBlock finds the fenced block shown for a file: group 2 is its body.
func exampleBlock(name string) *regexp.Regexp {
	return regexp.MustCompile("(?s)(<!-- testdata/protocol/" + regexp.QuoteMeta(name) + " -->\n```[a-z]*\n)(.*?)\n```")
}

// signatureBreakdown shows the digest that was signed and the signature,
// as DER and as r and s.
func signatureBreakdown(t testing.TB, env, paeBytes []byte) string {
	t.Helper()
	var e envelope
	if err := json.Unmarshal(env, &e); err != nil || len(e.Signatures) != 1 {
		t.Fatalf("envelope: %v, %d signatures", err, len(e.Signatures))
	}
	der, err := base64.StdEncoding.DecodeString(e.Signatures[0].Sig)
	if err != nil {
		t.Fatal(err)
	}
	rs := rawRS(t, der, 32)
	return fmt.Sprintf("SHA-256 of the PAE:  %x\nsignature, DER:      %x\nr:                   %x\ns:                   %x\nsignature, r||s:     %x\n",
		sha256.Sum256(paeBytes), der, rs[:32], rs[32:], rs)
}

func readKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	b, _ := pem.Decode(readTestdata(t, "device.key.pem"))
	if b == nil {
		t.Fatal("device.key.pem: no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

func readPublicKey(t testing.TB) *ecdsa.PublicKey {
	t.Helper()
	b, _ := pem.Decode(readTestdata(t, "device.pub.pem"))
	if b == nil {
		t.Fatal("device.pub.pem: no PEM block")
	}
	k, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PublicKey)
}

// writeExample signs the example anew (making the test key if there is
// none yet) and rewrites the files and protocol.md's blocks.
func writeExample(t *testing.T) {
	dir := filepath.Join("testdata", "protocol")
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "device.key.pem")); os.IsNotExist(err) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		write("device.key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		pub, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
		write("device.pub.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
	}
	st := attest.NewStatement(exampleReport())
	statement, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	env, err := attest.Sign(readKey(t), st)
	if err != nil {
		t.Fatal(err)
	}
	write("statement.json", statement)
	write("pae.txt", pae(attest.PayloadType, statement))
	write("envelope.json", env)
	write("signature.txt", []byte(signatureBreakdown(t, env, pae(attest.PayloadType, statement))))

	doc, err := os.ReadFile("protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range exampleFiles {
		body := strings.TrimSuffix(string(readTestdata(t, name)), "\n")
		doc = exampleBlock(name).ReplaceAllFunc(doc, func(m []byte) []byte {
			head := exampleBlock(name).FindSubmatch(m)[1]
			return append(append(append([]byte{}, head...), body...), "\n```"...)
		})
	}
	if err := os.WriteFile("protocol.md", doc, 0o644); err != nil {
		t.Fatal(err)
	}
}
