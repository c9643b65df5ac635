package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// The RAUC and SWUpdate installers hand the slot switch to the device's
// boot loader, which may fall back to the other slot on its own. Each of
// them records, in a small file of its state directory, the slot last
// committed: the device runs an uncommitted bundle when the boot loader
// boots another slot than that one (BootInspector), and a rollback returns
// the boot loader to it.

// confirmedSlot is the file under dir naming the slot last committed.
type confirmedSlot struct{ path string }

func newConfirmedSlot(dir, name string) (confirmedSlot, error) {
	if dir == "" {
		return confirmedSlot{}, errors.New("no state directory for the committed slot")
	}
	return confirmedSlot{path: filepath.Join(dir, name)}, nil
}

// get returns the slot recorded, or "" when none was.
func (c confirmedSlot) get() (string, error) {
	b, err := os.ReadFile(c.path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("committed slot: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (c confirmedSlot) set(slot string) error {
	if err := makeDir(filepath.Dir(c.path), 0o700); err != nil {
		return fmt.Errorf("committed slot: %w", err)
	}
	return writeFileAtomic(c.path, []byte(slot+"\n"), 0o600)
}

// initial records slot as committed when no slot was recorded yet (the
// first install on a device runs from the slot it was flashed with).
func (c confirmedSlot) initial(slot string) (string, error) {
	cur, err := c.get()
	if err != nil || cur != "" {
		return cur, err
	}
	return slot, c.set(slot)
}

// runTool runs a tool's command line with args and returns its standard
// output; a failure carries the first 4 KiB of its output.
func runTool(ctx context.Context, what string, command, env []string, args ...string) ([]byte, error) {
	if len(command) == 0 {
		return nil, fmt.Errorf("%s: no command", what)
	}
	cmd := exec.CommandContext(ctx, command[0], append(slices.Clone(command[1:]), args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stdout limitedBuffer
	stdout.max = 1 << 20
	stderr := &limitedBuffer{max: 4 << 10}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(string(stderr.b))
		if msg == "" {
			msg = strings.TrimSpace(string(stdout.b[:min(len(stdout.b), 4<<10)]))
		}
		return nil, fmt.Errorf("%s %s: %w: %s", what, strings.Join(args, " "), err, msg)
	}
	return stdout.b, nil
}
