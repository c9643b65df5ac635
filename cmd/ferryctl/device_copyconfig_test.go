package main

import (
	"context"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/agent/sim"
	"github.com/ferryhq/ferry/agent/transport"
	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/server"
)

// TestDeviceCopyConfig copies one simulated device's reported
// configuration (a subset of keys, then all of it) to others with ferryctl
// against a real ferryd: the devices receive it as a Delta, apply it and
// report it back, and the audit trail and each device's history say who
// did it. Wrong requests change nothing.
func TestDeviceCopyConfig(t *testing.T) {
	var auditorKey string
	f := ferrytest.Start(t, ferrytest.Embedded, func(c *server.Config) {
		auditorKey = ferrytest.AddOperator(t, c, "otto", credentials.RoleAuditor)
	})
	auditor := filepath.Join(t.TempDir(), "auditor")
	if err := os.WriteFile(auditor, []byte(auditorKey), 0o600); err != nil {
		t.Fatal(err)
	}
	f.Publish(t, "gw/fw-2.bin") // the repository's root, which the devices ship with
	link := transport.New(transport.Config{DeviceAddr: f.DeviceAddr(), APIURL: f.APIURL(), RootCAs: f.CAPool(t), ServerName: "localhost", SmallBuffers: true})
	ctx, cancel := context.WithCancel(context.Background())
	fl, err := sim.Start(ctx, sim.Config{
		Devices: 3, Prefix: "cc-", Labels: map[string]string{"site": "berlin"},
		Link: link, Enroller: transport.Enroller{Link: link}, Registrar: transport.NewRegistrar(link, f.OperatorToken(t)),
		TrustedRoot: f.TrustedRoot(t), Dir: t.TempDir(), MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := fl.Wait(); err != nil {
			t.Errorf("fleet: %v", err)
		}
	})
	src, others := fl.IDs[0], fl.IDs[1:]
	fleet := f.Fleet(t)
	device := func(id string) *fleetv1.Device {
		t.Helper()
		r, err := fleet.GetDevice(t.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: id}))
		if err != nil {
			t.Fatal(err)
		}
		return r.Msg.GetDevice()
	}
	// waitReported waits until the device reports cfg.
	waitReported := func(id string, cfg map[string]string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; {
			d := device(id)
			if got := d.GetReported().GetState().GetConfig(); maps.Equal(got, cfg) && d.GetReported().GetDesiredVersion() == d.GetDesired().GetVersion() {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("%s reports %v (job %v), want %v", id, got, d.GetJob(), cfg)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	mustRun := func(args ...string) string {
		t.Helper()
		out, err := run(t, f, args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return out
	}

	// A device that reports no configuration has none to give.
	if _, err := run(t, f, "device", "copy-config", "--from", src, "--selector", "site=berlin"); err == nil ||
		!strings.Contains(err.Error(), "invalid_argument: from_device_id: device \""+src+"\" has reported no configuration") {
		t.Errorf("copy from a device without configuration: %v", err)
	}

	// The source device's configuration, set and reported; the others
	// have one of their own.
	srcCfg := map[string]string{"log.level": "debug", "ntp.server": "ntp.berlin.example", "site.name": "Berlin"}
	args := []string{"device", "set-desired", src}
	for k, v := range srcCfg {
		args = append(args, "--config", k+"="+v)
	}
	mustRun(args...)
	waitReported(src, srcCfg)
	for _, id := range others {
		mustRun("device", "set-desired", id, "--config", "log.level=warn", "--config", "local=yes")
		waitReported(id, map[string]string{"log.level": "warn", "local": "yes"})
	}

	// Wrong requests: clear errors, nothing changes.
	before := map[string]uint64{}
	for _, id := range fl.IDs {
		before[id] = device(id).GetDesired().GetVersion()
	}
	for _, tt := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"unknown key", []string{"--from", src, "--selector", "site=berlin", "--keys", "log.level,nope"}, `invalid_argument: keys: device "` + src + `" reports no configuration key "nope"`},
		{"bad selector", []string{"--from", src, "--selector", "site in (berlin"}, "invalid_argument: selector"},
		{"unknown source", []string{"--from", "nobody", "--selector", "site=berlin"}, "not_found"},
		{"bad source id", []string{"--from", "../x", "--selector", "site=berlin"}, "invalid_argument: from_device_id"},
		{"no selector", []string{"--from", src}, "--from and --selector are required"},
	} {
		_, err := run(t, f, append([]string{"device", "copy-config"}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: error %v, want %q", tt.name, err, tt.wantErr)
		}
	}
	for id, v := range before {
		if got := device(id).GetDesired().GetVersion(); got != v {
			t.Errorf("%s: desired version %d after refused copies, want %d", id, got, v)
		}
	}

	// Some keys: set on top of what each device has.
	out := mustRun("device", "copy-config", "--from", src, "--selector", "site=berlin", "--keys", "log.level,ntp.server")
	if !strings.Contains(out, "2 devices matching site=berlin: configuration of "+src+" (log.level, ntp.server)") {
		t.Errorf("copy-config said %q", out)
	}
	for _, id := range others {
		waitReported(id, map[string]string{"log.level": "debug", "ntp.server": "ntp.berlin.example", "local": "yes"})
	}
	// All of it: the source's configuration replaces theirs.
	mustRun("device", "copy-config", "--from", src, "--selector", "site=berlin")
	for _, id := range others {
		waitReported(id, srcCfg)
		d := device(id)
		if by := d.GetDesired().GetSetBy(); by != "operator:dev-admin" {
			t.Errorf("%s: desired state set by %q, want operator:dev-admin", id, by)
		}
		evs := mustRun("device", "events", id)
		if !strings.Contains(evs, "config_copied") || !strings.Contains(evs, "copied from device "+src) || !strings.Contains(evs, "operator:dev-admin") {
			t.Errorf("%s: history lacks the copy:\n%s", id, evs)
		}
	}
	if got := device(src).GetDesired().GetVersion(); got != before[src] {
		t.Errorf("the source's desired version moved to %d", got)
	}
	audit := mustRun("--token-file", auditor, "audit", "list", "--action", "CopyConfig")
	if strings.Count(audit, "CopyConfig") < 2 || !strings.Contains(audit, "operator:dev-admin") {
		t.Errorf("audit trail lacks the copies:\n%s", audit)
	}
}
