package agent_test

import (
	"strings"
	"testing"

	"github.com/ferryhq/ferry/agent"
)

func TestParseRAUCStatus(t *testing.T) {
	const good = `{"compatible":"board","variant":"","booted":"B","boot_primary":"rootfs.1","slots":[` +
		`{"rootfs.1":{"class":"rootfs","device":"/dev/b","type":"raw","bootname":"B","state":"booted","boot_status":"good"}},` +
		`{"rootfs.0":{"class":"rootfs","device":"/dev/a","type":"raw","bootname":"A","state":"inactive","boot_status":"bad"}},` +
		`{"appfs.0":{"class":"appfs","device":"/dev/c","type":"raw","state":"inactive"}}]}`
	tests := []struct {
		name, in   string
		booted     string
		wantErr    string
		bootStatus string
	}{
		{name: "two slots and a child", in: good, booted: "rootfs.1", bootStatus: "bad"},
		{name: "not JSON", in: "Compatible: board", wantErr: "rauc status:"},
		{name: "no booted slot", in: `{"compatible":"board","slots":[]}`, wantErr: "no booted slot"},
		{name: "booted bootname matches no slot", in: `{"booted":"C","slots":[{"rootfs.0":{"bootname":"A"}}]}`, wantErr: `no slot has the booted bootname "C"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := agent.ParseRAUCStatus([]byte(tt.in))
			var booted string
			if err == nil {
				booted, err = st.BootedSlot()
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if booted != tt.booted || st.Compatible != "board" || st.BootPrimary != "rootfs.1" || len(st.Slots) != 3 {
				t.Fatalf("parsed %+v, booted %q", st, booted)
			}
			if got := st.Slots["rootfs.0"].BootStatus; got != tt.bootStatus {
				t.Errorf("rootfs.0 boot status %q, want %q", got, tt.bootStatus)
			}
		})
	}
}

// TestSWUpdateEnvRefusals: variables fw_setenv's script format cannot
// carry are refused before anything runs.
func TestSWUpdateEnvRefusals(t *testing.T) {
	s := &agent.SWUpdate{StateDir: t.TempDir(), SetEnv: []string{"false"}}
	for _, vars := range [][2]string{{"", "1"}, {"a=b", "1"}, {"a b", "1"}, {"boot_slot", "A\nustate=0"}} {
		err := s.SetEnvVars(t.Context(), [][2]string{vars})
		if err == nil || !strings.Contains(err.Error(), "cannot be set") {
			t.Errorf("SetEnvVars(%q) = %v, want a refusal", vars, err)
		}
	}
	// A failing fw_setenv is an error with the command in it.
	if err := s.SetEnvVars(t.Context(), [][2]string{{"ustate", "0"}}); err == nil || !strings.Contains(err.Error(), "boot loader environment -s") {
		t.Errorf("SetEnvVars with a failing tool = %v", err)
	}
}
