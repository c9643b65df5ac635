package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestDebianPackage builds the agent's Debian package with
// scripts/build-deb and checks it with dpkg-deb: its control fields, its
// files with their modes and owners, maintainer scripts that parse, a
// binary that runs, and a systemd unit that systemd-analyze verify
// accepts.
func TestDebianPackage(t *testing.T) {
	out := t.TempDir()
	build := exec.Command("../scripts/build-deb", "-o", out, "-v", "1.2.3-1")
	build.Env = append(os.Environ(), "DEBFULLNAME=Test Maker", "DEBEMAIL=maker@example.com")
	built, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/build-deb: %v\n%s", err, built)
	}
	arch := map[string]string{"386": "i386", "arm": "armhf"}[runtime.GOARCH]
	if arch == "" {
		arch = runtime.GOARCH
	}
	deb := filepath.Join(out, "ferry-agent_1.2.3-1_"+arch+".deb")
	if got := strings.TrimSpace(string(built)); got != deb {
		t.Fatalf("scripts/build-deb printed %q, want %q", got, deb)
	}
	dpkg := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("dpkg-deb", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg-deb %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	for field, want := range map[string]string{
		"Package": "ferry-agent", "Version": "1.2.3-1", "Architecture": arch,
		"Maintainer": "Test Maker <maker@example.com>", "Section": "admin", "Suggests": "rauc | swupdate",
	} {
		if got := strings.TrimSpace(dpkg("-f", deb, field)); got != want {
			t.Errorf("control field %s = %q, want %q", field, got, want)
		}
	}
	if got := dpkg("-I", deb, "conffiles"); strings.TrimSpace(got) != "/etc/ferry-agent/agent.env" {
		t.Errorf("conffiles = %q", got)
	}

	// dpkg-deb -c: mode, owner/group, size, date, time, path.
	entries := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(dpkg("-c", deb)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("dpkg-deb -c line %q", line)
		}
		path := strings.TrimSuffix(strings.TrimPrefix(f[5], "."), "/")
		if f[1] != "root/root" {
			t.Errorf("%s is owned by %s, want root/root", path, f[1])
		}
		entries[path] = f[0]
	}
	for path, mode := range map[string]string{
		"/usr/bin/ferry-agent":                        "-rwxr-xr-x",
		"/usr/lib/systemd/system/ferry-agent.service": "-rw-r--r--",
		"/etc/ferry-agent":                            "drwxr-x---",
		"/etc/ferry-agent/agent.env":                  "-rw-r-----",
		"/var/lib/ferry-agent":                        "drwx------",
		"/usr/share/doc/ferry-agent/agent.md":         "-rw-r--r--",
	} {
		if got, ok := entries[path]; !ok {
			t.Errorf("the package has no %s", path)
		} else if got != mode {
			t.Errorf("%s has mode %s, want %s", path, got, mode)
		}
	}

	root := t.TempDir()
	dpkg("-x", deb, root)
	control := t.TempDir()
	dpkg("-e", deb, control)
	for _, script := range []string{"postinst", "prerm", "postrm"} {
		if out, err := exec.Command("sh", "-n", filepath.Join(control, script)).CombinedOutput(); err != nil {
			t.Errorf("%s does not parse: %v\n%s", script, err, out)
		}
	}
	bin := filepath.Join(root, "usr/bin/ferry-agent")
	help, err := exec.Command(bin, "run", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("ferry-agent run --help: %v\n%s", err, help)
	}
	for _, flag := range []string{"--installer", "--rauc-conf", "--swupdate-args", "--state-dir"} {
		if !strings.Contains(string(help), flag) {
			t.Errorf("the packaged ferry-agent has no %s flag", flag)
		}
	}
	// The env file's variables are ones the agent reads.
	env, err := os.ReadFile(filepath.Join(root, "etc/ferry-agent/agent.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(env), "\n") {
		name, _, ok := strings.Cut(strings.TrimPrefix(line, "#"), "=")
		if !ok || !strings.HasPrefix(name, "FERRY_") {
			continue
		}
		if !strings.Contains(string(help), "$"+name+"]") {
			t.Errorf("agent.env names %s, which ferry-agent run does not read", name)
		}
	}

	// systemd-analyze verify needs the unit's binary at its path: check a
	// copy whose ExecStart names the extracted binary.
	unit, err := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system/ferry-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "ExecStart=/usr/bin/ferry-agent run --state-dir /var/lib/ferry-agent\n") {
		t.Fatalf("unexpected ExecStart in the unit:\n%s", unit)
	}
	copyPath := filepath.Join(t.TempDir(), "ferry-agent.service")
	if err := os.WriteFile(copyPath, []byte(strings.ReplaceAll(string(unit), "/usr/bin/ferry-agent", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("systemd-analyze", "verify", copyPath).CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
