package version

import "testing"

func TestCompare(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		// Numeric identifiers compare numerically.
		{"1.0.0-rc.9", "1.0.0-rc.10", -1},
		{"1.0.0-beta.2", "1.0.0-beta.11", -1},
		{"1.9.2", "1.10.0", -1},
		{"2.0.0", "1.9.9", 1},
		{"1.0.0", "1.0.0", 0},
		// Build metadata is ignored.
		{"2.0.0+build5", "2.0.0", 0},
		{"2.0.0+build5", "2.0.0+build6", 0},
		{"1.0.0-rc.1+b2", "1.0.0-rc.1", 0},
		// Shorthands equal their full form; a leading v means nothing.
		{"1.2", "1.2.0", 0},
		{"1", "1.0.0", 0},
		{"v1.2.0", "1.2.0", 0},
		{"v1.2", "1.2", 0},
		{"1.2", "1.2.1", -1},
		// A pre-release sorts before its release.
		{"1.2.0-rc1", "1.2.0", -1},
		{"1.0.0-alpha", "1.0.0", -1},
		// The ordering example of SemVer 2.0, section 11.
		{"1.0.0-alpha", "1.0.0-alpha.1", -1},
		{"1.0.0-alpha.1", "1.0.0-alpha.beta", -1},
		{"1.0.0-alpha.beta", "1.0.0-beta", -1},
		{"1.0.0-beta", "1.0.0-beta.2", -1},
		{"1.0.0-beta.2", "1.0.0-beta.11", -1},
		{"1.0.0-beta.11", "1.0.0-rc.1", -1},
		{"1.0.0-rc.1", "1.0.0", -1},
		// Identifiers with letters compare in ASCII order.
		{"1.0.0-rc1", "1.0.0-rc2", -1},
		{"1.0.0-Beta", "1.0.0-alpha", -1},
		// Not versions: below every version, equal to each other.
		{"", "0.0.1", -1},
		{"2024.05a", "0.0.1", -1},
		{"latest", "1.0.0-alpha", -1},
		{"2024.05a", "2024.05b", 0},
		{"01.2.3", "1.2.3", -1},
	}
	for _, tc := range tests {
		t.Run(tc.a+"_vs_"+tc.b, func(t *testing.T) {
			if got := Compare(tc.a, tc.b); got != tc.want {
				t.Errorf("Compare(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
			}
			if got := Compare(tc.b, tc.a); got != -tc.want {
				t.Errorf("Compare(%q, %q) = %d, want %d", tc.b, tc.a, got, -tc.want)
			}
		})
	}
}

func TestValid(t *testing.T) {
	tests := []struct {
		v     string
		valid bool
	}{
		{"1.2.0", true},
		{"v1.2.0", true},
		{"0.0.0", true},
		{"1.0.0-rc.10", true},
		{"1.0.0-alpha.beta.1", true},
		{"2.0.0+build5", true},
		{"1.0.0-rc.1+build.7.sha.5114f85", true},
		{"10.20.30", true},
		{"1.2", false},
		{"1", false},
		{"v1", false},
		{"1.2-rc.1", false},
		{"", false},
		{"v", false},
		{"vv1.2.0", false},
		{"V1.2.0", false},
		{"01.2.3", false},
		{"1.02.3", false},
		{"1.2.3-01", false},
		{"1.2.3-", false},
		{"1.2.3+", false},
		{"1.2.3.4", false},
		{"1.2.3 ", false},
		{"2024.05a", false},
		{"latest", false},
		{"1.2.3-rc..1", false},
	}
	for _, tc := range tests {
		t.Run(tc.v, func(t *testing.T) {
			err := Valid(tc.v)
			if (err == nil) != tc.valid {
				t.Fatalf("Valid(%q) = %v, want valid %v", tc.v, err, tc.valid)
			}
		})
	}
}
