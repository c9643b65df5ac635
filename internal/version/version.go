// Package version is Ferry's one rule for bundle versions: Semantic
// Versioning 2.0 (https://semver.org), checked and ordered by
// golang.org/x/mod/semver.
//
// golang.org/x/mod/semver is used rather than a larger semver library
// because it is maintained with the Go toolchain, has no dependencies and
// implements exactly SemVer 2.0 precedence: numeric identifiers compare
// numerically (rc.9 < rc.10), a pre-release sorts before its release, and
// build metadata ("+build5") is ignored.
//
// The rules, used by the repository at publish time and by the agent's
// downgrade check:
//
//   - A leading "v" is accepted and means nothing: "v1.2.0" equals "1.2.0".
//   - Valid (what a bundle may be published with) is full SemVer 2.0:
//     MAJOR.MINOR.PATCH, an optional -PRERELEASE and +BUILD, no leading
//     zeros. "1.2" and "1" are not valid.
//   - Compare also orders the shorthands "1.2" and "1" that repositories
//     may hold from before publish checked versions: "1.2" compares equal
//     to "1.2.0", "1" to "1.0.0". Any other string that is not a version
//     sorts below every version, and all such strings compare equal to
//     each other.
package version

import (
	"fmt"
	"strings"

	"golang.org/x/mod/semver"
)

// canonical returns v with the "v" prefix x/mod/semver expects.
func canonical(v string) string {
	if strings.HasPrefix(v, "v") {
		return v
	}
	return "v" + v
}

// Valid checks that v is a full SemVer 2.0 version, with or without a
// leading "v".
func Valid(v string) error {
	c := canonical(v)
	// Canonical expands shorthands ("v1.2" -> "v1.2.0") and drops build
	// metadata: a full version is its own canonical form once the build
	// metadata is removed.
	if !semver.IsValid(c) || semver.Canonical(c) != strings.TrimSuffix(c, semver.Build(c)) {
		return fmt.Errorf("version %q is not a semantic version: want MAJOR.MINOR.PATCH with an optional -PRERELEASE and +BUILD, for example 1.2.0 or 1.2.0-rc.1 (https://semver.org)", v)
	}
	return nil
}

// Compare returns -1, 0 or +1 as a is lower than, equal to or higher than
// b by SemVer 2.0 precedence, under the rules of the package comment.
func Compare(a, b string) int {
	return semver.Compare(canonical(a), canonical(b))
}
