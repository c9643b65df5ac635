package agent_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/agent"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// The RAUC and SWUpdate tests run Debian's rauc and swupdate on this
// machine against slots that are image files in a temporary directory,
// with a boot loader the test plays: RAUC's custom boot loader backend (a
// script over files the test reads) and a U-Boot environment in a file
// (written by SWUpdate's U-Boot interface and by fw_setenv). A "reboot"
// asks the test's boot loader which slot it boots, and makes it fall back
// to the other slot when the test says the new one does not boot.

// signer is a test-made CA and a signing certificate it issued, as PEM
// files in dir, valid from an hour ago for a day.
type signer struct{ caPEM, certPEM, keyPEM string }

func newSigner(t *testing.T, dir string) signer {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Ferry test update CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Ferry test update signer"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection, x509.ExtKeyUsageCodeSigning},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	s := signer{filepath.Join(dir, "ca.pem"), filepath.Join(dir, "signer.pem"), filepath.Join(dir, "signer.key")}
	writeFile(t, s.caPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
	writeFile(t, s.certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	writeFile(t, s.keyPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return s
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func run(t *testing.T, dir string, env []string, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir, cmd.Env = dir, append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// bootScenario is one install the tests carry out on a device booting
// slot A, and what must follow.
type bootScenario struct {
	name string
	// failBoot makes the boot loader fall back to A after the reboot
	// into the new slot; unhealthy fails the agent's health check.
	failBoot, unhealthy bool
	// foreign signs the bundle with a CA the device does not trust.
	foreign bool
	status  devicev1.JobStatus
	code    string
	booted  string // the slot booted in the end
}

var bootScenarios = []bootScenario{
	{name: "good", status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED, booted: "B"},
	{name: "boot fails", failBoot: true, status: devicev1.JobStatus_JOB_STATUS_ROLLED_BACK, code: agent.CodeNotBooted, booted: "A"},
	{name: "health fails", unhealthy: true, status: devicev1.JobStatus_JOB_STATUS_ROLLED_BACK, code: agent.CodeHealthFailed, booted: "A"},
	{name: "signed by another CA", foreign: true, status: devicev1.JobStatus_JOB_STATUS_FAILED, code: agent.CodeInstallFailed, booted: "A"},
}

// rebootFunc is a Rebooter that runs a simulated boot and restarts the
// agent in-process.
type rebootFunc func() error

func (f rebootFunc) Reboot(context.Context, agent.Job) error {
	if err := f(); err != nil {
		return err
	}
	return agent.ErrRestart
}

// raucRig is a RAUC system in a directory: a private D-Bus, the RAUC
// service, two raw slots (a.img, b.img) and the custom boot loader.
type raucRig struct {
	dir     string
	env     []string
	signer  signer
	service *exec.Cmd
	// failBoot makes the next boot of a slot not yet good fall back.
	failBoot bool
}

const raucBackend = `#!/bin/sh
# RAUC's custom boot loader backend: the boot loader's state in files.
D=$(dirname "$0")/bootloader
echo "$*" >> "$D/log"
case "$1" in
get-primary) cat "$D/primary" ;;
set-primary) echo "$2" > "$D/primary" ;;
get-state) cat "$D/state.$2" 2>/dev/null || echo good ;;
set-state) echo "$3" > "$D/state.$2" ;;
*) echo "unknown command $1" >&2; exit 1 ;;
esac
`

func newRAUCRig(t *testing.T) *raucRig {
	t.Helper()
	dir, err := os.MkdirTemp("", "ferry-rauc-") // short: a D-Bus socket path lives here
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	r := &raucRig{dir: dir, signer: newSigner(t, dir)}
	for _, d := range []string{"bootloader", "mnt", "data", "state"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, img := range []string{"a.img", "b.img"} {
		writeFile(t, filepath.Join(dir, img), make([]byte, 256<<10), 0o644)
	}
	writeFile(t, filepath.Join(dir, "bootloader", "primary"), []byte("A\n"), 0o644)
	writeFile(t, filepath.Join(dir, "backend.sh"), []byte(raucBackend), 0o755)
	writeFile(t, filepath.Join(dir, "system.conf"), []byte(`[system]
compatible=ferry-test-board
bootloader=custom
mountprefix=`+dir+`/mnt
statusfile=`+dir+`/data/status.raucs

[keyring]
path=`+r.signer.caPEM+`

[handlers]
bootloader-custom-backend=`+dir+`/backend.sh

[slot.rootfs.0]
device=`+dir+`/a.img
type=raw
bootname=A

[slot.rootfs.1]
device=`+dir+`/b.img
type=raw
bootname=B
`), 0o644)
	// A private bus: rauc service and rauc talk over it as over the
	// system bus on a device.
	sock := filepath.Join(dir, "bus")
	writeFile(t, filepath.Join(dir, "bus.conf"), []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=`+sock+`</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`), 0o644)
	bus := exec.Command("dbus-daemon", "--nofork", "--config-file="+filepath.Join(dir, "bus.conf"))
	if err := bus.Start(); err != nil {
		t.Fatalf("dbus-daemon: %v", err)
	}
	t.Cleanup(func() { bus.Process.Kill(); bus.Wait() })
	waitFor(t, "the D-Bus socket", func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	r.env = []string{"DBUS_SESSION_BUS_ADDRESS=unix:path=" + sock, "DBUS_STARTER_BUS_TYPE=session"}
	t.Cleanup(r.stopService)
	if err := r.boot(); err != nil {
		t.Fatal(err)
	}
	return r
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *raucRig) file(name string) string { return filepath.Join(r.dir, name) }

func (r *raucRig) stopService() {
	if r.service != nil {
		r.service.Process.Kill()
		r.service.Wait()
		r.service = nil
	}
}

// boot is the device's boot: the boot loader picks its primary slot; if
// that slot was just installed (not yet marked good by mark-good, which
// the backend records as "good") and failBoot is set, it does not come up
// and the boot loader marks it bad and falls back to the other. Then the
// RAUC service starts on the slot booted.
func (r *raucRig) boot() error {
	r.stopService()
	bl := filepath.Join(r.dir, "bootloader")
	primary, err := os.ReadFile(filepath.Join(bl, "primary"))
	if err != nil {
		return err
	}
	slot := strings.TrimSpace(string(primary))
	if r.failBoot && slot == "B" {
		if err := os.WriteFile(filepath.Join(bl, "state.B"), []byte("bad\n"), 0o644); err != nil {
			return err
		}
		slot = "A"
		if err := os.WriteFile(filepath.Join(bl, "primary"), []byte("A\n"), 0o644); err != nil {
			return err
		}
	}
	cmd := exec.Command("rauc", "service", "--conf="+r.file("system.conf"), "--override-boot-slot="+slot)
	cmd.Env = append(os.Environ(), r.env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	r.service = cmd
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := r.installer().Status(context.Background())
		if err == nil && st.Booted == slot {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.Join(errors.New("rauc service did not come up"), err, errors.New(out.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *raucRig) installer() *agent.RAUC {
	return &agent.RAUC{Command: []string{"rauc", "--conf=" + r.file("system.conf")}, Env: r.env, StateDir: r.file("state")}
}

// bundle builds a signed RAUC bundle whose rootfs image is payload.
func (r *raucRig) bundle(t *testing.T, s signer, version string, payload []byte) []byte {
	t.Helper()
	content := t.TempDir()
	writeFile(t, filepath.Join(content, "rootfs.img"), payload, 0o644)
	writeFile(t, filepath.Join(content, "manifest.raucm"), []byte(`[update]
compatible=ferry-test-board
version=`+version+`

[bundle]
format=plain

[image.rootfs]
filename=rootfs.img
`), 0o644)
	out := filepath.Join(t.TempDir(), "update.raucb")
	run(t, "", nil, "rauc", "bundle", "--cert="+s.certPEM, "--key="+s.keyPEM, content, out)
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestRAUC(t *testing.T) {
	w := newWorld(t)
	for i, sc := range bootScenarios {
		t.Run(sc.name, func(t *testing.T) {
			r := newRAUCRig(t)
			payload := []byte("rootfs 2.0.0 of " + sc.name)
			signWith := r.signer
			if sc.foreign {
				signWith = newSigner(t, t.TempDir())
			}
			data := r.bundle(t, signWith, "2.0.0", payload)
			b := w.addData(t, "rauc/"+strings.ReplaceAll(sc.name, " ", "-")+".raucb", data)
			d := w.newDevice(t, "rauc-"+string(rune('a'+i)))
			d.unhealthy = sc.unhealthy
			d.rebooter = rebootFunc(func() error {
				r.failBoot = sc.failBoot
				return r.boot()
			})
			w.background(t, d, func(c *agent.Config) { c.Installer = r.installer() })
			dev := w.waitSettled(t, d, w.setDesired(t, d, b, nil))
			job := dev.GetJob()
			if job.GetStatus() != sc.status || job.GetErrorCode() != sc.code {
				t.Fatalf("job ended %v %q (%s), want %v %q", job.GetStatus(), job.GetErrorCode(), job.GetMessage(), sc.status, sc.code)
			}
			st, err := r.installer().Status(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			primary := readTrim(t, r.file("bootloader/primary"))
			if st.Booted != sc.booted || primary != sc.booted {
				t.Fatalf("RAUC boots %s with primary %s, want %s", st.Booted, primary, sc.booted)
			}
			// RAUC wrote the bundle's image into slot B, unless it refused
			// the bundle's signature.
			if img, _ := os.ReadFile(r.file("b.img")); bytes.HasPrefix(img, payload) == sc.foreign {
				t.Fatalf("slot B holds %q", img[:min(len(img), 40)])
			}
			log := readTrim(t, r.file("bootloader/log"))
			stateB := map[devicev1.JobStatus]string{devicev1.JobStatus_JOB_STATUS_SUCCEEDED: "good", devicev1.JobStatus_JOB_STATUS_FAILED: "good"}[sc.status]
			if stateB == "" {
				stateB = "bad"
			}
			if got := st.Slots["rootfs.1"].BootStatus; got != stateB {
				t.Errorf("slot B's boot status is %q, want %q; the boot loader saw:\n%s", got, stateB, log)
			}
			t.Logf("boot loader calls:\n%s", log)
		})
	}
}

// swuRig is an SWUpdate system in a directory: two raw slots (a.img,
// b.img) and a U-Boot environment in the file uboot.env, which SWUpdate's
// U-Boot interface (libubootenv) and fw_printenv/fw_setenv read through
// fw_env.config. SWUpdate reads /etc/fw_env.config; it runs in a mount
// namespace of its own where an overlay on /etc holds the test's copy, so
// the machine's /etc is not touched; and in a network namespace of its
// own, with its own TMPDIR, because its control sockets (an abstract Unix
// socket and two in TMPDIR) have fixed names that another swupdate on the
// machine would share.
type swuRig struct {
	dir    string
	signer signer
	// failBoot makes the boot loader fall back from slot B to A.
	failBoot bool
}

func newSWURig(t *testing.T) *swuRig {
	t.Helper()
	dir := t.TempDir()
	r := &swuRig{dir: dir, signer: newSigner(t, dir)}
	for _, d := range []string{"overlay", "state", "tmp"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, img := range []string{"a.img", "b.img"} {
		writeFile(t, filepath.Join(dir, img), make([]byte, 256<<10), 0o644)
	}
	writeFile(t, r.file("uboot.env"), make([]byte, 16<<10), 0o644)
	writeFile(t, r.file("fw_env.config"), []byte(r.file("uboot.env")+" 0x0 0x4000 0x4000\n"), 0o644)
	writeFile(t, r.file("initial.env"), []byte("boot_slot=A\n"), 0o644)
	run(t, dir, nil, "fw_setenv", "-c", r.file("fw_env.config"), "-f", r.file("initial.env"))
	return r
}

func (r *swuRig) file(name string) string { return filepath.Join(r.dir, name) }

func (r *swuRig) installer() *agent.SWUpdate {
	cfg := r.file("fw_env.config")
	return &agent.SWUpdate{
		Command: []string{"unshare", "--mount", "--net", "sh", "-c",
			// The overlay's upper layer on a tmpfs of the namespace: any
			// file system under the test's directory will do.
			`mount -t tmpfs ferry-test "$0/overlay" && mkdir "$0/overlay/upper" "$0/overlay/work" && ` +
				`mount -t overlay overlay -o "lowerdir=/etc,upperdir=$0/overlay/upper,workdir=$0/overlay/work" /etc && ` +
				`cp "$0/fw_env.config" /etc/fw_env.config && exec swupdate "$@"`,
			r.dir},
		Args:     []string{"-B", "uboot", "-k", r.signer.caPEM, "-H", "ferry-test-board:1.0"},
		SlotVar:  "boot_slot",
		Select:   map[string]string{"A": "stable,copy2", "B": "stable,copy1"},
		PrintEnv: []string{"fw_printenv", "-c", cfg},
		SetEnv:   []string{"fw_setenv", "-c", cfg},
		StateDir: r.file("state"),
		Env:      []string{"TMPDIR=" + r.file("tmp")},
	}
}

func (r *swuRig) env(t *testing.T, name string) string {
	t.Helper()
	v, err := r.installer().EnvVar(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// boot is U-Boot's boot with a boot counter: an update being tried
// (upgrade_available=1) counts its boots, and one that does not come up
// (failBoot, slot B) runs altbootcmd, which switches back to slot A and
// ends the try.
func (r *swuRig) boot() error {
	inst := r.installer()
	ctx := context.Background()
	upgrade, err := inst.EnvVar(ctx, "upgrade_available")
	if err != nil {
		return err
	}
	slot, err := inst.EnvVar(ctx, "boot_slot")
	if err != nil {
		return err
	}
	if upgrade != "1" {
		return nil
	}
	if r.failBoot && slot == "B" {
		return inst.SetEnvVars(ctx, [][2]string{{"bootcount", "4"}, {"boot_slot", "A"}, {"upgrade_available", "0"}})
	}
	return inst.SetEnvVars(ctx, [][2]string{{"bootcount", "1"}})
}

// swu builds a signed .swu (a cpio newc archive: sw-description, its CMS
// signature, the image) whose image is payload, with one selection per
// slot.
func (r *swuRig) swu(t *testing.T, s signer, version string, payload []byte) []byte {
	t.Helper()
	content := t.TempDir()
	writeFile(t, filepath.Join(content, "rootfs.img"), payload, 0o644)
	sha := sha256Hex(payload)
	copyOf := func(slot, img string) string {
		return `{
      images: ( { filename = "rootfs.img"; device = "` + r.file(img) + `"; type = "raw"; sha256 = "` + sha + `"; } );
      bootenv: ( { name = "boot_slot"; value = "` + slot + `"; }, { name = "upgrade_available"; value = "1"; } );
    };`
	}
	writeFile(t, filepath.Join(content, "sw-description"), []byte(`software = {
  version = "`+version+`";
  hardware-compatibility: [ "1.0" ];
  stable = {
    copy1 = `+copyOf("A", "a.img")+`
    copy2 = `+copyOf("B", "b.img")+`
  };
};
`), 0o644)
	run(t, content, nil, "openssl", "cms", "-sign", "-in", "sw-description", "-out", "sw-description.sig",
		"-signer", s.certPEM, "-inkey", s.keyPEM, "-outform", "DER", "-nosmimecap", "-binary")
	cmd := exec.Command("cpio", "-o", "-H", "newc", "--quiet")
	cmd.Dir, cmd.Stdin = content, strings.NewReader("sw-description\nsw-description.sig\nrootfs.img\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio: %v", err)
	}
	return out
}

func sha256Hex(b []byte) string { return tuftest.SHA256(b) }

func TestSWUpdate(t *testing.T) {
	w := newWorld(t)
	for i, sc := range bootScenarios {
		t.Run(sc.name, func(t *testing.T) {
			r := newSWURig(t)
			payload := []byte("rootfs 2.0.0 of " + sc.name)
			signWith := r.signer
			if sc.foreign {
				signWith = newSigner(t, t.TempDir())
			}
			b := w.addData(t, "swupdate/"+strings.ReplaceAll(sc.name, " ", "-")+".swu", r.swu(t, signWith, "2.0.0", payload))
			d := w.newDevice(t, "swupdate-"+string(rune('a'+i)))
			d.unhealthy = sc.unhealthy
			d.rebooter = rebootFunc(func() error {
				r.failBoot = sc.failBoot
				return r.boot()
			})
			w.background(t, d, func(c *agent.Config) { c.Installer = r.installer() })
			dev := w.waitSettled(t, d, w.setDesired(t, d, b, nil))
			job := dev.GetJob()
			if job.GetStatus() != sc.status || job.GetErrorCode() != sc.code {
				t.Fatalf("job ended %v %q (%s), want %v %q", job.GetStatus(), job.GetErrorCode(), job.GetMessage(), sc.status, sc.code)
			}
			wantState := map[devicev1.JobStatus]string{devicev1.JobStatus_JOB_STATUS_SUCCEEDED: agent.SWUStateOK,
				devicev1.JobStatus_JOB_STATUS_ROLLED_BACK: agent.SWUStateFailed, devicev1.JobStatus_JOB_STATUS_FAILED: agent.SWUStateOK}[sc.status]
			got := map[string]string{}
			for _, v := range []string{"boot_slot", "ustate", "upgrade_available"} {
				got[v] = r.env(t, v)
			}
			want := map[string]string{"boot_slot": sc.booted, "ustate": wantState, "upgrade_available": "0"}
			if sc.foreign {
				want["upgrade_available"] = "" // never set: nothing was installed
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("boot loader environment %s=%q, want %q (all: %v)", k, got[k], v, got)
				}
			}
			// SWUpdate wrote the image into slot B, unless it refused the
			// signature of sw-description.
			if img, _ := os.ReadFile(r.file("b.img")); bytes.HasPrefix(img, payload) == sc.foreign {
				t.Fatalf("slot B holds %q", img[:min(len(img), 40)])
			}
		})
	}
}
