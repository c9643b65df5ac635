package credentials

import (
	"errors"
	"path/filepath"
	"testing"
)

func TestRoleAllows(t *testing.T) {
	roles := []Role{RoleViewer, RoleOperator, RoleRelease, RoleAdmin}
	// allowed[have][need]
	allowed := map[Role][]Role{
		RoleViewer:   {RoleViewer},
		RoleOperator: {RoleViewer, RoleOperator},
		RoleRelease:  {RoleViewer, RoleRelease},
		RoleAdmin:    {RoleViewer, RoleOperator, RoleRelease, RoleAdmin},
		Role("root"): {},
	}
	for have, ok := range allowed {
		for _, need := range roles {
			want := false
			for _, r := range ok {
				want = want || r == need
			}
			if got := have.Allows(need); got != want {
				t.Errorf("%q.Allows(%q) = %v, want %v", have, need, got, want)
			}
		}
	}
}

func TestAuthenticate(t *testing.T) {
	key, err := NewAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "operators.json")
	if err := WriteOperatorKeys(path, []OperatorKey{{Name: "ci", Role: RoleOperator, KeySHA256: HashAPIKey(key)}}); err != nil {
		t.Fatal(err)
	}
	keys, err := LoadOperatorKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewAPIKey()
	tests := []struct {
		name, key string
		want      Operator
		ok        bool
	}{
		{"valid", key, Operator{Name: "ci", Role: RoleOperator}, true},
		{"unknown", other, Operator{}, false},
		{"empty", "", Operator{}, false},
		{"hash instead of key", HashAPIKey(key), Operator{}, false},
		{"truncated", key[:len(key)-1], Operator{}, false},
	}
	for _, tt := range tests {
		got, err := keys.Authenticate(tt.key)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("%s: Authenticate = %+v, %v", tt.name, got, err)
		}
		if err != nil && !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s: error %v is not ErrUnauthenticated", tt.name, err)
		}
	}
}

func TestNewOperatorKeysRefusesBadEntries(t *testing.T) {
	good := HashAPIKey("ferry_x")
	tests := []OperatorKey{
		{Name: "", Role: RoleAdmin, KeySHA256: good},
		{Name: "a", Role: "superuser", KeySHA256: good},
		{Name: "a", Role: RoleAdmin, KeySHA256: "abc"},
	}
	for _, e := range tests {
		if _, err := NewOperatorKeys([]OperatorKey{e}); err == nil {
			t.Errorf("NewOperatorKeys(%+v) succeeded", e)
		}
	}
}
