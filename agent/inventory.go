package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferryhq/ferry/inventory"
)

// MaxInventoryOutput is the most an inventory hook may print; longer
// output is ignored as a whole.
const MaxInventoryOutput = 64 << 10

// attributes is what the device reports about itself: its hardware model,
// agent version, operating system and kernel, the free space of
// StorageDir, each left out when unknown or not a valid attribute value,
// and what the inventory hook prints. The agent's own attributes win over
// the hook's; a hook that fails, times out or prints anything invalid is
// logged and its output ignored.
func (a *Agent) attributes(ctx context.Context) map[string]string {
	out := map[string]string{}
	put := func(k, v string) {
		if v = strings.TrimSpace(v); v != "" && inventory.ValidValue(v) == nil {
			out[k] = v
		}
	}
	put(inventory.Hardware, a.cfg.Hardware)
	put(inventory.AgentVersion, strings.TrimPrefix(a.cfg.AgentVersion, "ferry-agent/"))
	put(inventory.OS, osRelease("/etc/os-release"))
	if raw, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		put(inventory.Kernel, string(raw))
	}
	if a.cfg.StorageDir != "" {
		if free, err := freeBytes(a.cfg.StorageDir); err != nil {
			a.log.WarnContext(ctx, "free storage unknown", "dir", a.cfg.StorageDir, "err", err)
		} else {
			put(inventory.StorageFree, strconv.FormatUint(free, 10))
		}
	}
	if len(a.cfg.InventoryHook) == 0 {
		return out
	}
	hook, err := runInventoryHook(ctx, a.cfg.InventoryHook, a.cfg.InventoryTimeout)
	merged := maps.Clone(out)
	for k, v := range hook {
		if _, own := out[k]; !own {
			merged[k] = v
		}
	}
	if err == nil {
		err = inventory.Validate(merged)
	}
	if err != nil {
		a.log.WarnContext(ctx, "inventory hook output ignored", "hook", a.cfg.InventoryHook[0], "err", err)
		return out
	}
	return merged
}

// freeBytes is the space free to unprivileged users in the file system of
// dir, rounded down to a MiB (so that it changes rarely).
func freeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	free := st.Bavail * uint64(st.Bsize)
	return free &^ (1<<20 - 1), nil
}

// cappedBuffer keeps at most max bytes and fails the write past them.
type cappedBuffer struct {
	bytes.Buffer
	max int
}

var errTooMuchOutput = fmt.Errorf("more than %d bytes of output", MaxInventoryOutput)

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.max {
		return 0, errTooMuchOutput
	}
	return b.Buffer.Write(p)
}

// runInventoryHook runs command and parses its output: one key=value a
// line; blank lines and lines starting with '#' are skipped. Every
// attribute must be valid (inventory.Validate), or none is used.
func runInventoryHook(ctx context.Context, command []string, timeout time.Duration) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, command[0], command[1:]...)
	cmd.WaitDelay = time.Second
	stdout := &cappedBuffer{max: MaxInventoryOutput}
	var stderr cappedBuffer
	stderr.max = 4 << 10
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	err := cmd.Run()
	switch {
	case ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return nil, fmt.Errorf("timed out after %v", timeout)
	case stdout.Len() >= MaxInventoryOutput || errors.Is(err, errTooMuchOutput):
		return nil, errTooMuchOutput
	case err != nil:
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return nil, fmt.Errorf("%w: %s", err, msg)
		}
		return nil, err
	}
	return ParseInventory(stdout.Bytes())
}

// ParseInventory parses an inventory hook's output: one key=value a line
// (blank lines and lines starting with '#' skipped), every attribute
// valid by inventory.Validate and each key given once.
func ParseInventory(out []byte) (map[string]string, error) {
	attrs := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 4096), MaxInventoryOutput)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: want key=value", n)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if _, dup := attrs[k]; dup {
			return nil, fmt.Errorf("line %d: key %q given twice", n, k)
		}
		attrs[k] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := inventory.Validate(attrs); err != nil {
		return nil, err
	}
	return attrs, nil
}

// refreshInventory collects the attributes again when due (the interval
// passed, or a job ended) and sends them if they changed since the stream's
// Hello or the last Inventory.
func (a *Agent) refreshInventory(ctx context.Context, stream Stream) error {
	now := a.cfg.Now()
	if !a.inventoryStale && now.Before(a.inventoryNext) {
		return nil
	}
	a.inventoryStale, a.inventoryNext = false, now.Add(a.cfg.InventoryInterval)
	attrs := a.attributes(ctx)
	if maps.Equal(attrs, a.inventorySent) {
		return nil
	}
	a.log.InfoContext(ctx, "inventory changed", "attributes", attrs)
	if err := stream.SendInventory(attrs); err != nil {
		return err
	}
	a.inventorySent = attrs
	return nil
}

// osRelease returns "<ID>-<VERSION_ID>" of an os-release file ("" when
// unreadable).
func osRelease(path string) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var id, ver string
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"'`)
		switch k {
		case "ID":
			id = v
		case "VERSION_ID":
			ver = v
		}
	}
	if id == "" || ver == "" {
		return id
	}
	return id + "-" + ver
}
