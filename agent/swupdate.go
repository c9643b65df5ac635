package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// SWUpdate installs .swu images with SWUpdate (https://swupdate.org):
// Install runs "swupdate [Args] [-e SELECTION] -i FILE", and SWUpdate
// checks the image's signature and hardware compatibility, writes the
// slot the selection names and sets the boot loader's environment (with
// the U-Boot interface, "ustate=1" and the variables of the image's
// bootenv section, such as the slot to boot and "upgrade_available=1").
// After the reboot the agent's health check runs (the CONFIRMING step);
// Commit sets "ustate=0" and "upgrade_available=0", as SWUpdate's
// documentation asks of the application that confirms an update. A failed
// health check, or a failed boot, ends in ROLLED_BACK: Rollback sets
// SlotVar back to the committed slot, "upgrade_available=0" and
// "ustate=3" (failed), and the device reboots into the committed slot
// when it was not booting it already.
//
// The boot loader's environment is read and written with fw_printenv and
// fw_setenv (Debian's libubootenv-tool) by default; set PrintEnv and
// SetEnv for another boot loader. SWUpdate is safe for concurrent use.
type SWUpdate struct {
	// Command is the swupdate command; empty means "swupdate".
	Command []string
	// Args are passed to every install: "-k", the signing certificate;
	// "-H", the board and revision; "-B", the boot loader interface;
	// "-f", a configuration file.
	Args []string
	// SlotVar is the boot loader variable naming the slot it boots
	// ("boot_slot"); empty for a single-copy system, whose uncommitted
	// state is read from "ustate".
	SlotVar string
	// Select maps the booted slot (SlotVar's value) to the software
	// selection ("-e stable,copy2") that writes the other slot.
	Select map[string]string
	// PrintEnv prints one variable's value with "-n NAME"; empty means
	// "fw_printenv". SetEnv sets variables from a script file of
	// "NAME=VALUE" lines with "-s FILE"; empty means "fw_setenv".
	PrintEnv, SetEnv []string
	// Env is added to the environment of every call.
	Env []string
	// StateDir holds the file "swupdate-committed", the slot last
	// committed, and the script file given to SetEnv.
	StateDir string
	mu       sync.Mutex
}

// SWUpdate's update states ("ustate") in the boot loader's environment.
const (
	SWUStateOK        = "0"
	SWUStateInstalled = "1"
	SWUStateTesting   = "2"
	SWUStateFailed    = "3"
)

// EnvVar returns a boot loader variable's value ("" when unset).
func (s *SWUpdate) EnvVar(ctx context.Context, name string) (string, error) {
	cmd := s.PrintEnv
	if len(cmd) == 0 {
		cmd = []string{"fw_printenv"}
	}
	out, err := runTool(ctx, "boot loader environment", cmd, s.Env, "-n", name)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// SetEnvVars sets boot loader variables in one write.
func (s *SWUpdate) SetEnvVars(ctx context.Context, vars [][2]string) error {
	cmd := s.SetEnv
	if len(cmd) == 0 {
		cmd = []string{"fw_setenv"}
	}
	if s.StateDir == "" {
		return fmt.Errorf("swupdate: no state directory")
	}
	var b strings.Builder
	for _, v := range vars {
		if strings.ContainsAny(v[0]+v[1], "\n") || v[0] == "" || strings.ContainsAny(v[0], " =") {
			return fmt.Errorf("boot loader variable %q=%q cannot be set", v[0], v[1])
		}
		fmt.Fprintf(&b, "%s=%s\n", v[0], v[1])
	}
	script := filepath.Join(s.StateDir, "swupdate-env.script")
	if err := makeDir(s.StateDir, 0o700); err != nil {
		return err
	}
	if err := writeFileAtomic(script, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("boot loader environment: %w", err)
	}
	defer removeFile(script)
	_, err := runTool(ctx, "boot loader environment", cmd, s.Env, "-s", script)
	return err
}

func (s *SWUpdate) committed() (confirmedSlot, error) {
	return newConfirmedSlot(s.StateDir, "swupdate-committed")
}

// booted returns the slot the boot loader boots ("" without SlotVar) and
// the slot last committed.
func (s *SWUpdate) booted(ctx context.Context) (booted, committed string, err error) {
	c, err := s.committed()
	if err != nil {
		return "", "", err
	}
	if s.SlotVar == "" {
		return "", "", nil
	}
	if booted, err = s.EnvVar(ctx, s.SlotVar); err != nil {
		return "", "", err
	}
	if booted == "" {
		return "", "", fmt.Errorf("boot loader variable %s is not set", s.SlotVar)
	}
	committed, err = c.get()
	return booted, committed, err
}

// Install implements Installer.
func (s *SWUpdate) Install(ctx context.Context, job Job) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	booted, committed, err := s.booted(ctx)
	if err != nil {
		return err
	}
	args := slices.Clone(s.Args)
	if len(s.Select) > 0 {
		sel, ok := s.Select[booted]
		if !ok {
			return fmt.Errorf("swupdate: no software selection for booted slot %q", booted)
		}
		args = append(args, "-e", sel)
	}
	if s.SlotVar != "" && committed == "" {
		c, _ := s.committed()
		if err := c.set(booted); err != nil {
			return err
		}
	}
	// SWUpdate sets ustate=1 at the very end of a successful install.
	// Starting from ustate=0 lets the agent read the outcome from the
	// environment as well as from the exit status (see below).
	if err := s.SetEnvVars(ctx, [][2]string{{"ustate", SWUStateOK}}); err != nil {
		return err
	}
	cmd := s.Command
	if len(cmd) == 0 {
		cmd = []string{"swupdate"}
	}
	_, err = runTool(ctx, "swupdate", cmd, s.Env, append(args, "-i", job.Path)...)
	if err != nil && s.installed(ctx) {
		// "swupdate -i" (2022.12, Debian bookworm) can exit 1 after an
		// install that succeeded, when its IPC client misses the end of
		// the update on a busy machine. The environment says what
		// happened: ustate=1 and no transaction marker.
		return nil
	}
	return err
}

// installed reports whether the boot loader's environment shows a
// completed install: ustate=1 and the transaction marker
// (recovery_status) cleared.
func (s *SWUpdate) installed(ctx context.Context) bool {
	st, err := s.EnvVar(ctx, "ustate")
	if err != nil || st != SWUStateInstalled {
		return false
	}
	marker, err := s.EnvVar(ctx, "recovery_status")
	return err == nil && marker == ""
}

// Commit implements Installer.
func (s *SWUpdate) Commit(ctx context.Context, _ Job) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	booted, _, err := s.booted(ctx)
	if err != nil {
		return err
	}
	if err := s.SetEnvVars(ctx, [][2]string{{"ustate", SWUStateOK}, {"upgrade_available", "0"}}); err != nil {
		return err
	}
	if s.SlotVar == "" {
		return nil
	}
	c, _ := s.committed()
	return c.set(booted)
}

// Rollback implements Installer.
func (s *SWUpdate) Rollback(ctx context.Context, _ Job) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	booted, committed, err := s.booted(ctx)
	if err != nil {
		return err
	}
	vars := [][2]string{{"upgrade_available", "0"}, {"ustate", SWUStateFailed}}
	if s.SlotVar != "" && committed != "" && committed != booted {
		vars = append([][2]string{{s.SlotVar, committed}}, vars...)
	}
	return s.SetEnvVars(ctx, vars)
}

// Uncommitted implements BootInspector: with SlotVar, the boot loader
// boots another slot than the one committed; without, "ustate" says
// installed or testing.
func (s *SWUpdate) Uncommitted(ctx context.Context) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	booted, committed, err := s.booted(ctx)
	if err != nil {
		return false, err
	}
	if s.SlotVar != "" {
		return committed != "" && booted != committed, nil
	}
	st, err := s.EnvVar(ctx, "ustate")
	if err != nil {
		return false, err
	}
	return st == SWUStateInstalled || st == SWUStateTesting, nil
}
