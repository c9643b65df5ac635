package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Job describes the job a hook works on.
type Job struct {
	ID             string
	DesiredVersion uint64
	// Bundle is the bundle being installed (nil for configuration only).
	Bundle *Bundle
	// Version is the bundle's version from its signed metadata.
	Version string
	// Path is the verified bundle file (install only).
	Path string
	// Config is the desired configuration.
	Config map[string]string
}

// Installer installs a verified bundle so that it runs after the next
// restart, and then either commits it or rolls it back. Implementations
// decide what "installed" means (a new A/B slot, a package, a container).
type Installer interface {
	// Install writes the bundle at job.Path so that the next boot runs
	// it. On error nothing may have changed.
	Install(ctx context.Context, job Job) error
	// Commit makes the installed bundle permanent after a good health
	// check.
	Commit(ctx context.Context, job Job) error
	// Rollback returns to what ran before Install.
	Rollback(ctx context.Context, job Job) error
}

// HealthChecker runs after the restart that follows an install; an error
// rolls the job back.
type HealthChecker interface {
	Check(ctx context.Context, job Job) error
}

// Rebooter restarts the device after an install. A real device reboots
// (and Reboot does not return); Soft asks the caller to start a new agent
// in the same process.
type Rebooter interface {
	Reboot(ctx context.Context, job Job) error
}

// ConfigApplier applies the desired configuration.
type ConfigApplier interface {
	Apply(ctx context.Context, job Job) error
}

// Soft is a Rebooter that restarts the agent in-process: Run returns
// ErrRestart and the caller starts a new Agent.
type Soft struct{}

// Reboot implements Rebooter.
func (Soft) Reboot(context.Context, Job) error { return ErrRestart }

// Healthy is a HealthChecker that always passes.
type Healthy struct{}

// Check implements HealthChecker.
func (Healthy) Check(context.Context, Job) error { return nil }

// IgnoreConfig is a ConfigApplier that only records the configuration.
type IgnoreConfig struct{}

// Apply implements ConfigApplier.
func (IgnoreConfig) Apply(context.Context, Job) error { return nil }

// Exec runs a hook command for every action. The command gets the action
// as its last argument and these environment variables:
//
//	FERRY_ACTION           install, commit, rollback, health, reboot or config
//	FERRY_JOB_ID           the job id
//	FERRY_DESIRED_VERSION  the desired version the job carries out
//	FERRY_BUNDLE_PATH      the verified bundle file (install)
//	FERRY_TARGET_PATH      the bundle's TUF target path
//	FERRY_BUNDLE_SHA256    the bundle's SHA-256, hex
//	FERRY_BUNDLE_LENGTH    its length in bytes
//	FERRY_BUNDLE_VERSION   its version from the signed metadata
//	FERRY_CONFIG_<KEY>     each desired configuration value; the key is
//	                       upper-cased and every byte that is not a letter
//	                       or digit becomes "_"
//
// A non-zero exit fails the action; the first 4 KiB of its output is the
// error message. Exec implements Installer, HealthChecker, Rebooter and
// ConfigApplier.
type Exec struct {
	// Command and its leading arguments.
	Command []string
	// Env is added to the agent's environment.
	Env []string
}

// Install implements Installer.
func (e Exec) Install(ctx context.Context, job Job) error { return e.run(ctx, "install", job) }

// Commit implements Installer.
func (e Exec) Commit(ctx context.Context, job Job) error { return e.run(ctx, "commit", job) }

// Rollback implements Installer.
func (e Exec) Rollback(ctx context.Context, job Job) error { return e.run(ctx, "rollback", job) }

// Check implements HealthChecker.
func (e Exec) Check(ctx context.Context, job Job) error { return e.run(ctx, "health", job) }

// Reboot implements Rebooter.
func (e Exec) Reboot(ctx context.Context, job Job) error { return e.run(ctx, "reboot", job) }

// Apply implements ConfigApplier.
func (e Exec) Apply(ctx context.Context, job Job) error { return e.run(ctx, "config", job) }

// HookEnv returns the environment variables a hook gets for action.
func HookEnv(action string, job Job) []string {
	env := []string{
		"FERRY_ACTION=" + action,
		"FERRY_JOB_ID=" + job.ID,
		"FERRY_DESIRED_VERSION=" + strconv.FormatUint(job.DesiredVersion, 10),
	}
	if job.Path != "" {
		env = append(env, "FERRY_BUNDLE_PATH="+job.Path)
	}
	if b := job.Bundle; b != nil {
		env = append(env, "FERRY_TARGET_PATH="+b.TargetPath, "FERRY_BUNDLE_SHA256="+b.SHA256,
			"FERRY_BUNDLE_LENGTH="+strconv.FormatUint(b.Length, 10), "FERRY_BUNDLE_VERSION="+job.Version)
	}
	for _, k := range slices.Sorted(maps.Keys(job.Config)) {
		env = append(env, "FERRY_CONFIG_"+envKey(k)+"="+job.Config[k])
	}
	return env
}

func envKey(k string) string {
	b := []byte(strings.ToUpper(k))
	for i, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

func (e Exec) run(ctx context.Context, action string, job Job) error {
	if len(e.Command) == 0 {
		return errors.New("exec hook: no command")
	}
	cmd := exec.CommandContext(ctx, e.Command[0], append(slices.Clone(e.Command[1:]), action)...)
	cmd.Env = append(append(os.Environ(), e.Env...), HookEnv(action, job)...)
	out := &limitedBuffer{max: 4 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s hook: %w: %s", action, err, strings.TrimSpace(string(out.b)))
	}
	return nil
}

type limitedBuffer struct {
	b   []byte
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// AB is the built-in A/B installer: two slot directories, "a" and "b",
// under Dir, and a "boot" symbolic link naming the slot the device boots.
// Install copies the bundle into the slot not booted and switches "boot"
// to it with one atomic rename; Rollback switches it back to the slot in
// "confirmed"; Commit makes "confirmed" name the booted slot. A boot
// loader (or the device's init) starts whatever "boot" names. Each slot
// holds the bundle as the file "bundle". AB is safe for concurrent use.
type AB struct {
	Dir string
	mu  sync.Mutex
}

// Slots of an AB installer.
const (
	SlotA = "a"
	SlotB = "b"
)

// Booted returns the slot "boot" names (SlotA when none was set).
func (ab *AB) Booted() (string, error) { return ab.read("boot") }

// Confirmed returns the slot last committed (SlotA when none was).
func (ab *AB) Confirmed() (string, error) { return ab.read("confirmed") }

func (ab *AB) read(name string) (string, error) {
	s, err := os.Readlink(filepath.Join(ab.Dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return SlotA, nil
	}
	if err != nil {
		return "", fmt.Errorf("a/b %s: %w", name, err)
	}
	if s != SlotA && s != SlotB {
		return "", fmt.Errorf("a/b %s names %q, not a slot", name, s)
	}
	return s, nil
}

// point replaces link name with one to slot, atomically.
func (ab *AB) point(name, slot string) error {
	if err := replaceLink(ab.Dir, name, slot); err != nil {
		return fmt.Errorf("a/b %s: %w", name, err)
	}
	return nil
}

func other(slot string) string {
	if slot == SlotA {
		return SlotB
	}
	return SlotA
}

// Install implements Installer.
func (ab *AB) Install(ctx context.Context, job Job) error {
	ab.mu.Lock()
	defer ab.mu.Unlock()
	confirmed, err := ab.Confirmed()
	if err != nil {
		return err
	}
	target := other(confirmed)
	dir := filepath.Join(ab.Dir, target)
	if err := makeDir(dir, 0o755); err != nil {
		return fmt.Errorf("a/b slot %s: %w", target, err)
	}
	if err := copyFileAtomic(ctx, job.Path, filepath.Join(dir, "bundle")); err != nil {
		return fmt.Errorf("a/b slot %s: %w", target, err)
	}
	return ab.point("boot", target)
}

// OpenBase implements BaseOpener: the bundle file of the confirmed slot,
// the one the device runs between jobs.
func (ab *AB) OpenBase(context.Context, Bundle) (*os.File, error) {
	ab.mu.Lock()
	defer ab.mu.Unlock()
	confirmed, err := ab.Confirmed()
	if err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(ab.Dir, confirmed, "bundle"))
	if err != nil {
		return nil, fmt.Errorf("a/b slot %s: %w", confirmed, err)
	}
	return f, nil
}

// Uncommitted implements BootInspector: "boot" names another slot than
// "confirmed".
func (ab *AB) Uncommitted(context.Context) (bool, error) {
	ab.mu.Lock()
	defer ab.mu.Unlock()
	booted, err := ab.Booted()
	if err != nil {
		return false, err
	}
	confirmed, err := ab.Confirmed()
	if err != nil {
		return false, err
	}
	return booted != confirmed, nil
}

// Commit implements Installer.
func (ab *AB) Commit(context.Context, Job) error {
	ab.mu.Lock()
	defer ab.mu.Unlock()
	booted, err := ab.Booted()
	if err != nil {
		return err
	}
	return ab.point("confirmed", booted)
}

// Rollback implements Installer.
func (ab *AB) Rollback(context.Context, Job) error {
	ab.mu.Lock()
	defer ab.mu.Unlock()
	confirmed, err := ab.Confirmed()
	if err != nil {
		return err
	}
	return ab.point("boot", confirmed)
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
