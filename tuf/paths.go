package tuf

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/internal/version"
)

// Limits on what the repository accepts.
const (
	// MaxTargetPathLen is the longest target path.
	MaxTargetPathLen = 255
	// MaxRootBytes, MaxTargetsBytes: largest metadata documents accepted;
	// they equal go-tuf's client defaults, so nothing is published that a
	// standard client would refuse to download.
	MaxRootBytes    = 512000
	MaxTargetsBytes = 5000000
)

var (
	segmentRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]*$`)
	roleNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	sha256RE   = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ValidTargetPath checks a target path: slash-separated segments of
// letters, digits, '.', '_', '+' and '-', each starting with a letter or
// digit (so no "..", no hidden files, no absolute paths), at most
// MaxTargetPathLen bytes.
func ValidTargetPath(p string) error {
	if p == "" || len(p) > MaxTargetPathLen {
		return invalidf("target path %q: want 1 to %d bytes", p, MaxTargetPathLen)
	}
	for _, seg := range strings.Split(p, "/") {
		if !segmentRE.MatchString(seg) {
			return invalidf("target path %q: segment %q is not allowed (letters, digits, '.', '_', '+', '-'; no empty, '.' or '..' segments)", p, seg)
		}
	}
	return nil
}

// ValidRoleName checks the name of a delegated targets role.
func ValidRoleName(name string) bool {
	return roleNameRE.MatchString(name) && name != metadata.ROOT && name != metadata.SNAPSHOT && name != metadata.TIMESTAMP
}

// BlobKey is the storage key of the blob with a SHA-256 digest (hex).
func BlobKey(sha256Hex string) string { return "blobs/sha256/" + sha256Hex }

// metadataKey is the storage key of a metadata file name.
func metadataKey(name string) string { return "metadata/" + name }

// ValidSHA256 reports whether s is a lowercase hex SHA-256 digest.
func ValidSHA256(s string) bool { return sha256RE.MatchString(s) }

// BundleInfo is Ferry's custom metadata of a target, under "ferry" in the
// target's "custom" object.
type BundleInfo struct {
	Name             string    `json:"name"`
	Version          string    `json:"version"`
	Hardware         []string  `json:"hardware,omitempty"`
	ReleaseNotes     string    `json:"release_notes,omitempty"`
	DowngradeAllowed bool      `json:"downgrade_allowed,omitempty"`
	Published        time.Time `json:"published"`
}

// ValidBundleVersion checks a bundle version: full Semantic Versioning
// 2.0 (MAJOR.MINOR.PATCH, optional -PRERELEASE and +BUILD), with or
// without a leading "v". Devices order versions by SemVer precedence to
// refuse downgrades, so the repository accepts no version they could not
// order.
func ValidBundleVersion(v string) error {
	if err := version.Valid(v); err != nil {
		return invalidf("%v", err)
	}
	return nil
}

// ferryVersion returns the version in Ferry's custom metadata of a
// target; ok is false when the target has none (custom that is not an
// object, or has no "ferry" member, belongs to another tool).
func ferryVersion(path string, custom *json.RawMessage) (v string, ok bool, err error) {
	if custom == nil {
		return "", false, nil
	}
	var members map[string]json.RawMessage
	if json.Unmarshal(*custom, &members) != nil {
		return "", false, nil
	}
	raw, ok := members["ferry"]
	if !ok {
		return "", false, nil
	}
	var info BundleInfo
	if err := json.Unmarshal(raw, &info); err != nil {
		return "", true, invalidf("target %q: custom metadata \"ferry\": %v", path, err)
	}
	return info.Version, true, nil
}

// checkBundleVersion checks the version in Ferry's custom metadata of a
// target being published. prev is the target as published before, if
// any: a version it already had is kept, even one published before
// versions were checked, so older bundles do not block their role.
func checkBundleVersion(path string, tf, prev *metadata.TargetFiles) error {
	v, ok, err := ferryVersion(path, tf.Custom)
	if err != nil || !ok {
		return err
	}
	if prev != nil {
		if pv, pok, _ := ferryVersion(path, prev.Custom); pok && pv == v {
			return nil
		}
	}
	if err := version.Valid(v); err != nil {
		return invalidf("target %q: %v", path, err)
	}
	return nil
}

type customJSON struct {
	Ferry *BundleInfo `json:"ferry,omitempty"`
}

// Bundle is a published target as Ferry describes it.
type Bundle struct {
	Path   string
	Length int64
	// Hashes are hex digests by algorithm.
	Hashes map[string]string
	// Role is the targets role that signed it.
	Role string
	Info BundleInfo
	// Delta is set when the target is a patch (see DeltaInfo).
	Delta *DeltaInfo
}

// SHA256 returns the bundle's SHA-256 digest, hex.
func (b Bundle) SHA256() string { return b.Hashes["sha256"] }

func bundleFrom(path, role string, tf *metadata.TargetFiles) Bundle {
	b := Bundle{Path: path, Length: tf.Length, Role: role, Hashes: make(map[string]string, len(tf.Hashes))}
	for alg, h := range tf.Hashes {
		b.Hashes[alg] = hex.EncodeToString(h)
	}
	if tf.Custom != nil {
		var c customJSON
		if json.Unmarshal(*tf.Custom, &c) == nil && c.Ferry != nil {
			b.Info = *c.Ferry
		}
		if d, ok, err := ParseDelta(tf.Custom); ok && err == nil {
			b.Delta = &d
		}
	}
	return b
}

// NewTargetFile describes a blob as a TUF target with Ferry's custom
// metadata.
func NewTargetFile(path string, length int64, sha256Hex string, info BundleInfo) (*metadata.TargetFiles, error) {
	if err := ValidTargetPath(path); err != nil {
		return nil, err
	}
	if err := ValidBundleVersion(info.Version); err != nil {
		return nil, err
	}
	digest, err := hex.DecodeString(sha256Hex)
	if err != nil || len(digest) != sha256.Size {
		return nil, invalidf("sha256 %q: want 64 hex digits", sha256Hex)
	}
	custom, err := json.Marshal(customJSON{Ferry: &info})
	if err != nil {
		return nil, err
	}
	raw := json.RawMessage(custom)
	return &metadata.TargetFiles{
		Length: length,
		Hashes: metadata.Hashes{"sha256": digest},
		Custom: &raw,
		Path:   path,
	}, nil
}

// HashedTargetName returns the name a target is served under with
// consistent snapshots: "<dir>/<sha256>.<base>".
func HashedTargetName(path, sha256Hex string) string {
	dir, base := "", path
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		dir, base = path[:i+1], path[i+1:]
	}
	return dir + sha256Hex + "." + base
}

// ParseHashedTargetName splits a served target name into the target path
// and the SHA-256 digest.
func ParseHashedTargetName(name string) (path, sha256Hex string, err error) {
	dir, base := "", name
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		dir, base = name[:i+1], name[i+1:]
	}
	digest, rest, ok := strings.Cut(base, ".")
	if !ok || !ValidSHA256(digest) {
		return "", "", invalidf("target name %q: want <dir>/<sha256>.<name>", name)
	}
	path = dir + rest
	if err := ValidTargetPath(path); err != nil {
		return "", "", err
	}
	return path, digest, nil
}

func fmtRole(role string, version int64) string { return fmt.Sprintf("%d.%s.json", version, role) }
