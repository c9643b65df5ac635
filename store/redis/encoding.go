package redis

import (
	"encoding/json"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Stored documents (device meta, desired and reported documents, history
// events and attestations) are CBOR (RFC 8949, github.com/fxamacker/cbor),
// keyed by the same names as their JSON form: the encoder reads the
// types' json struct tags (omitempty and omitzero included), so store's
// domain types carry one set of tags. CBOR is about a third smaller than
// JSON for these documents (byte strings instead of base64, no quoting)
// and several times cheaper to decode.
//
// Documents written by earlier versions are JSON. A CBOR document of a
// struct is a map, whose first byte is 0xa0-0xbf; JSON's is '{'. decodeDoc
// tells them apart by that byte, so an existing Redis keeps working, and a
// document is rewritten as CBOR by its next write.

var (
	cborEnc cbor.EncMode
	cborDec cbor.DecMode
)

func init() {
	var err error
	// Times as RFC 3339 text with nanoseconds keep what JSON kept: the
	// instant to the nanosecond and the zone offset.
	if cborEnc, err = (cbor.EncOptions{Time: cbor.TimeRFC3339Nano, Sort: cbor.SortNone}).EncMode(); err != nil {
		panic(err)
	}
	if cborDec, err = (cbor.DecOptions{MaxArrayElements: 1 << 20, MaxMapPairs: 1 << 20}).DecMode(); err != nil {
		panic(err)
	}
}

// encodeDoc returns the stored form of v.
func encodeDoc(v any) ([]byte, error) {
	b, err := cborEnc.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return b, nil
}

// decodeDoc decodes a stored document, CBOR or (written by earlier
// versions) JSON, into v.
func decodeDoc(raw []byte, v any) error {
	if len(raw) > 0 && raw[0] == '{' {
		return json.Unmarshal(raw, v)
	}
	return cborDec.Unmarshal(raw, v)
}
