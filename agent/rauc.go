package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
)

// RAUC installs bundles with RAUC (https://rauc.io): Install runs
// "rauc install BUNDLE" (the bundle Ferry delivers is a signed RAUC
// bundle, checked again by RAUC against its keyring), which writes the
// slots not booted and makes them the boot loader's primary. After the
// reboot the agent's health check runs (the CONFIRMING step); Commit runs
// "rauc status mark-good booted". A failed health check runs "rauc status
// mark-bad booted" and "rauc status mark-active" on the slot committed
// before, and the device reboots into it (ROLLED_BACK). When the boot
// loader itself fell back (the new slot did not boot), the agent finds the
// committed slot booted and reports ROLLED_BACK without a reboot.
//
// The rauc command line talks to the RAUC service over D-Bus, as on any
// RAUC system. RAUC's "booted" slot comes from "rauc status
// --output-format=json". RAUC is safe for concurrent use.
type RAUC struct {
	// Command is the rauc command and leading options (such as
	// "--conf=/etc/rauc/system.conf"); empty means "rauc".
	Command []string
	// Env is added to the environment of every rauc call (for example
	// DBUS_SYSTEM_BUS_ADDRESS).
	Env []string
	// StateDir holds the file "rauc-committed", the slot last committed.
	StateDir string
	mu       sync.Mutex
}

// RAUCStatus is the part of "rauc status --output-format=json" the
// installer reads.
type RAUCStatus struct {
	Compatible string `json:"compatible"`
	// Booted is the bootname of the booted slot.
	Booted string `json:"booted"`
	// BootPrimary is the name of the boot loader's primary slot.
	BootPrimary string `json:"boot_primary"`
	// Slots by name ("rootfs.0").
	Slots map[string]RAUCSlot `json:"-"`
}

// RAUCSlot is one slot of RAUCStatus.
type RAUCSlot struct {
	Class      string `json:"class"`
	Device     string `json:"device"`
	Bootname   string `json:"bootname"`
	State      string `json:"state"`
	BootStatus string `json:"boot_status"`
}

// BootedSlot returns the name of the booted slot ("rootfs.0").
func (s RAUCStatus) BootedSlot() (string, error) {
	for name, sl := range s.Slots {
		if sl.Bootname != "" && sl.Bootname == s.Booted {
			return name, nil
		}
	}
	return "", fmt.Errorf("rauc status: no slot has the booted bootname %q", s.Booted)
}

// ParseRAUCStatus parses the output of "rauc status --output-format=json".
func ParseRAUCStatus(data []byte) (RAUCStatus, error) {
	var raw struct {
		RAUCStatus
		Slots []map[string]RAUCSlot `json:"slots"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return RAUCStatus{}, fmt.Errorf("rauc status: %w", err)
	}
	st := raw.RAUCStatus
	st.Slots = map[string]RAUCSlot{}
	for _, m := range raw.Slots {
		for name, sl := range m {
			st.Slots[name] = sl
		}
	}
	if st.Booted == "" {
		return RAUCStatus{}, errors.New("rauc status: no booted slot")
	}
	return st, nil
}

func (r *RAUC) rauc(ctx context.Context, args ...string) ([]byte, error) {
	cmd := r.Command
	if len(cmd) == 0 {
		cmd = []string{"rauc"}
	}
	return runTool(ctx, "rauc", cmd, r.Env, args...)
}

// Status returns RAUC's view of the slots.
func (r *RAUC) Status(ctx context.Context) (RAUCStatus, error) {
	out, err := r.rauc(ctx, "status", "--output-format=json")
	if err != nil {
		return RAUCStatus{}, err
	}
	return ParseRAUCStatus(out)
}

func (r *RAUC) committed() (confirmedSlot, error) {
	return newConfirmedSlot(r.StateDir, "rauc-committed")
}

// booted returns the booted slot and the slot last committed.
func (r *RAUC) booted(ctx context.Context) (booted, committed string, err error) {
	c, err := r.committed()
	if err != nil {
		return "", "", err
	}
	st, err := r.Status(ctx)
	if err != nil {
		return "", "", err
	}
	if booted, err = st.BootedSlot(); err != nil {
		return "", "", err
	}
	committed, err = c.get()
	return booted, committed, err
}

// Install implements Installer.
func (r *RAUC) Install(ctx context.Context, job Job) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	booted, committed, err := r.booted(ctx)
	if err != nil {
		return err
	}
	if committed == "" {
		c, _ := r.committed()
		if err := c.set(booted); err != nil {
			return err
		}
	}
	_, err = r.rauc(ctx, "install", job.Path)
	return err
}

// Commit implements Installer.
func (r *RAUC) Commit(ctx context.Context, _ Job) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	booted, _, err := r.booted(ctx)
	if err != nil {
		return err
	}
	if _, err := r.rauc(ctx, "status", "mark-good", "booted"); err != nil {
		return err
	}
	c, _ := r.committed()
	return c.set(booted)
}

// Rollback implements Installer: the booted slot, if it is not the one
// committed, is marked bad, and the committed one active again.
func (r *RAUC) Rollback(ctx context.Context, _ Job) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	booted, committed, err := r.booted(ctx)
	if err != nil {
		return err
	}
	if committed == "" {
		committed = booted
	}
	if booted != committed {
		if _, err := r.rauc(ctx, "status", "mark-bad", "booted"); err != nil {
			return err
		}
	}
	_, err = r.rauc(ctx, "status", "mark-active", committed)
	return err
}

// Uncommitted implements BootInspector: the booted slot is not the one
// committed.
func (r *RAUC) Uncommitted(ctx context.Context) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	booted, committed, err := r.booted(ctx)
	if err != nil {
		return false, err
	}
	return committed != "" && booted != committed, nil
}
