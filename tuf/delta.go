package tuf

import (
	"encoding/hex"
	"encoding/json"
	"slices"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/delta"
)

// A patch target carries, beside Ferry's usual custom metadata, a "delta"
// member naming the target it applies to (base) and the target it makes
// (result):
//
//	{"ferry": {...}, "delta": {"base": {"path": P, "sha256": H, "length": N},
//	  "result": {"path": P2, "sha256": H2, "length": N2},
//	  "format": "zstd-patch-from", "window": W}}
//
// Its path is DeltaPath(P2, H), so a device computes it from what it runs
// and what it is asked to run.

// DeltaRef names a target by path, SHA-256 (hex) and length.
type DeltaRef struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Length int64  `json:"length"`
}

// DeltaInfo is the "delta" member of a patch target's custom metadata.
type DeltaInfo struct {
	Base   DeltaRef `json:"base"`
	Result DeltaRef `json:"result"`
	Format string   `json:"format"`
	Window int      `json:"window"`
}

// DeltaPath returns the path of the patch from the base whose SHA-256 is
// baseSHA256 to the target at resultPath: "<resultPath>.delta-<the first
// 16 hex digits of baseSHA256>".
func DeltaPath(resultPath, baseSHA256 string) string {
	if len(baseSHA256) > 16 {
		baseSHA256 = baseSHA256[:16]
	}
	return resultPath + ".delta-" + baseSHA256
}

// ParseDelta returns the "delta" member of a target's custom metadata; ok
// is false when the target is not a patch.
func ParseDelta(custom *json.RawMessage) (d DeltaInfo, ok bool, err error) {
	if custom == nil {
		return DeltaInfo{}, false, nil
	}
	var members map[string]json.RawMessage
	if json.Unmarshal(*custom, &members) != nil {
		return DeltaInfo{}, false, nil
	}
	raw, ok := members["delta"]
	if !ok {
		return DeltaInfo{}, false, nil
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return DeltaInfo{}, true, invalidf("custom metadata \"delta\": %v", err)
	}
	return d, true, nil
}

// NewDeltaTargetFile describes an uploaded patch as a TUF target at
// DeltaPath(d.Result.Path, d.Base.SHA256) with Ferry's custom metadata
// (info, normally the result's) and d.
func NewDeltaTargetFile(length int64, sha256Hex string, info BundleInfo, d DeltaInfo) (*metadata.TargetFiles, error) {
	tf, err := NewTargetFile(DeltaPath(d.Result.Path, d.Base.SHA256), length, sha256Hex, info)
	if err != nil {
		return nil, err
	}
	custom, err := json.Marshal(struct {
		Ferry *BundleInfo `json:"ferry"`
		Delta *DeltaInfo  `json:"delta"`
	}{&info, &d})
	if err != nil {
		return nil, err
	}
	raw := json.RawMessage(custom)
	tf.Custom = &raw
	if err := checkDeltaShape(tf.Path, d); err != nil {
		return nil, err
	}
	return tf, nil
}

// checkDeltaShape checks what a patch target's metadata says on its own.
func checkDeltaShape(path string, d DeltaInfo) error {
	switch {
	case d.Format != delta.Format:
		return invalidf("patch %q: format %q; want %q", path, d.Format, delta.Format)
	case d.Window < delta.MinWindow || d.Window > delta.MaxWindow || d.Window&(d.Window-1) != 0:
		return invalidf("patch %q: window %d is not a power of two from %d to %d", path, d.Window, delta.MinWindow, delta.MaxWindow)
	case !ValidSHA256(d.Base.SHA256) || !ValidSHA256(d.Result.SHA256):
		return invalidf("patch %q: base and result want a sha256 of 64 lowercase hex digits", path)
	case d.Base.Length < 0 || d.Result.Length < 0:
		return invalidf("patch %q: negative length", path)
	case d.Base.Path == d.Result.Path:
		return invalidf("patch %q: base and result are the same target %q", path, d.Base.Path)
	case path != DeltaPath(d.Result.Path, d.Base.SHA256):
		return invalidf("patch %q: a patch from %s to %q must be published at %q", path, d.Base.SHA256, d.Result.Path, DeltaPath(d.Result.Path, d.Base.SHA256))
	}
	return nil
}

// checkDeltas checks the patch targets that updates add or change: the
// shape of their "delta" metadata, and that their base and result are
// published in next (the repository as it will be after the batch: the
// result is normally a bundle of the same batch) with the named length and
// SHA-256 and are not patches themselves. A patch already published is
// not checked again, so removing a base does not block its role.
func checkDeltas(cur, next *state, updates map[string]*metadata.Metadata[metadata.TargetsType]) error {
	for role, md := range updates {
		old := cur.roles[role]
		for path, tf := range md.Signed.Targets {
			d, ok, err := ParseDelta(tf.Custom)
			if err != nil {
				return invalidf("target %q: %v", path, err)
			}
			if !ok {
				continue
			}
			if old != nil {
				if prev := old.Signed.Targets[path]; prev != nil && prev.Length == tf.Length && slices.Equal(prev.Hashes["sha256"], tf.Hashes["sha256"]) && jsonEqual(prev.Custom, tf.Custom) {
					continue
				}
			}
			if err := checkDeltaShape(path, d); err != nil {
				return err
			}
			for _, ref := range []struct {
				what string
				ref  DeltaRef
			}{{"base", d.Base}, {"result", d.Result}} {
				_, t, ok := next.lookup(ref.ref.Path)
				if !ok {
					return preconditionf("patch %q: its %s %q is not published", path, ref.what, ref.ref.Path)
				}
				if t.Length != ref.ref.Length || hex.EncodeToString(t.Hashes["sha256"]) != ref.ref.SHA256 {
					return preconditionf("patch %q: its %s %q is published with another length or sha256", path, ref.what, ref.ref.Path)
				}
				if _, isPatch, _ := ParseDelta(t.Custom); isPatch {
					return invalidf("patch %q: its %s %q is a patch", path, ref.what, ref.ref.Path)
				}
			}
		}
	}
	return nil
}

func jsonEqual(a, b *json.RawMessage) bool {
	if a == nil || b == nil {
		return a == b
	}
	return string(*a) == string(*b)
}
