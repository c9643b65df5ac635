package inventory_test

import (
	"strings"
	"testing"

	"github.com/ferryhq/ferry/inventory"
)

func TestValidate(t *testing.T) {
	many := map[string]string{}
	for i := range inventory.MaxAttributes + 1 {
		many["k"+strings.Repeat("x", i%50)+string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	tests := []struct {
		name  string
		attrs map[string]string
		ok    bool
	}{
		{"none", nil, true},
		{"well-known", map[string]string{inventory.Hardware: "gw2", inventory.OS: "debian-12", inventory.StorageFree: "1048576"}, true},
		{"free text value", map[string]string{"site": "Hall 3, bay 4"}, true},
		{"dotted key", map[string]string{"vendor.board_rev": "c"}, true},
		{"empty value", map[string]string{"x": ""}, true},
		{"empty key", map[string]string{"": "x"}, false},
		{"key with space", map[string]string{"a b": "x"}, false},
		{"key ends with dot", map[string]string{"a.": "x"}, false},
		{"key with slash", map[string]string{"a/b": "x"}, false},
		{"long key", map[string]string{strings.Repeat("k", 59): "x"}, false},
		{"long value", map[string]string{"k": strings.Repeat("v", 257)}, false},
		{"control character", map[string]string{"k": "a\nb"}, false},
		{"not UTF-8", map[string]string{"k": "\xff"}, false},
		{"too many", many, false},
	}
	for _, tt := range tests {
		if err := inventory.Validate(tt.attrs); (err == nil) != tt.ok {
			t.Errorf("%s: Validate = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}
