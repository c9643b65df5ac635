package agent

import (
	"strings"
	"testing"
)

func TestParsePatchInfo(t *testing.T) {
	tests := []struct {
		name    string
		custom  string
		ok      bool
		wantErr bool
		want    PatchInfo
	}{
		{name: "absent", custom: ""},
		{name: "a bundle", custom: `{"ferry":{"name":"gw","version":"2.0.0"}}`},
		{name: "a patch", ok: true,
			custom: `{"ferry":{"name":"gw","version":"2.0.1"},"delta":{"base":{"path":"gw/2.0.0/fw.bin","sha256":"aa","length":10},` +
				`"result":{"path":"gw/2.0.1/fw.bin","sha256":"bb","length":11},"format":"zstd-patch-from","window":65536}}`,
			want: PatchInfo{Base: PatchFile{"gw/2.0.0/fw.bin", "aa", 10}, Result: PatchFile{"gw/2.0.1/fw.bin", "bb", 11}, Format: "zstd-patch-from", Window: 65536}},
		{name: "malformed", custom: `{"delta":`, wantErr: true},
		{name: "negative length", custom: `{"delta":{"base":{"length":-1}}}`, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := ParsePatchInfo([]byte(tc.custom))
			if (err != nil) != tc.wantErr || ok != tc.ok || got != tc.want {
				t.Errorf("ParsePatchInfo = %+v, %v, %v; want %+v, %v, error %v", got, ok, err, tc.want, tc.ok, tc.wantErr)
			}
		})
	}
}

// FuzzParsePatchInfo: a patch's metadata is signed, and still must never
// panic the agent.
func FuzzParsePatchInfo(f *testing.F) {
	f.Add([]byte(`{"delta":{"base":{"path":"a","sha256":"b","length":1},"result":{"path":"c"},"window":4096}}`))
	f.Add([]byte(`{"delta":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, ok, err := ParsePatchInfo(b)
		if (err != nil || !ok) && info != (PatchInfo{}) {
			t.Errorf("not a patch (%v, %v) with a non-zero result %+v", ok, err, info)
		}
	})
}

func TestPatchURL(t *testing.T) {
	const sha = "0d3b0e91a38d1227792d8ac73aafff2e1d4199a26e238915c9b28dc6f86b5455"
	bundle := hashedName("gw/2.1.1/gw 2.1.1.bin", sha)
	patch := hashedName(PatchPath("gw/2.1.1/gw 2.1.1.bin", "71ad02c521fecdd9e203"), "ab12")
	tests := []struct {
		name, url, want, wantErr string
	}{
		{name: "token URL", url: "https://api:8443/tuf/targets/gw/2.1.1/" + sha + ".gw%202.1.1.bin",
			want: "https://api:8443/tuf/targets/gw/2.1.1/ab12.gw%202.1.1.bin.delta-71ad02c521fecdd9"},
		{name: "pre-signed URL keeps its token", url: "https://cdn/t/gw/2.1.1/" + sha + ".gw%202.1.1.bin?token=xyz",
			want: "https://cdn/t/gw/2.1.1/ab12.gw%202.1.1.bin.delta-71ad02c521fecdd9?token=xyz"},
		{name: "another target's URL", url: "https://api/tuf/targets/gw/2.1.0/" + sha + ".gw.bin?token=secret", wantErr: "does not end with"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := siblingURL(tc.url, bundle, patch)
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "secret") {
					t.Errorf("siblingURL = %q, %v; want an error with %q and no token", got, err, tc.wantErr)
				}
			case err != nil || got != tc.want:
				t.Errorf("siblingURL = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
