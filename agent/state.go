package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
)

// Persisted is what the agent keeps across restarts.
type Persisted struct {
	// LastApplied is the newest desired version whose report ferryd
	// accepted.
	LastApplied uint64 `json:"lastApplied"`
	// Current is what the device runs.
	Current State `json:"current"`
	// Pending is a job whose install has begun and that has no final
	// result yet; it is written before the install starts.
	Pending *Pending `json:"pending,omitempty"`
	// Outbox is a final result not yet accepted by ferryd; it is sent
	// again on every new stream until it is answered.
	Outbox *Result `json:"outbox,omitempty"`
	// TrustedRoot is the newest TUF root the device trusts (JSON).
	TrustedRoot json.RawMessage `json:"trustedRoot,omitempty"`
}

// Pending is a job between the start of its install and its final
// result. It is saved before each step that changes what the device
// boots, so that an agent stopped at any instruction (power loss) knows,
// when it starts again, what it was doing (see Phase).
type Pending struct {
	JobID          string `json:"jobId"`
	DesiredVersion uint64 `json:"desiredVersion"`
	// Phase is where the job is; empty (a state written by an older agent)
	// is PhaseInstalled.
	Phase    Phase `json:"phase,omitempty"`
	Previous State `json:"previous"`
	Next     State `json:"next"`
	// Failure is the result to report once the rollback of PhaseRollingBack
	// is done, and Reboot whether the device reboots then (it may run the
	// bundle rolled back).
	Failure *Result `json:"failure,omitempty"`
	Reboot  bool    `json:"reboot,omitempty"`
	// Download is how the job fetched its bundle, said again in the
	// Progress sent after a restart.
	Download Download `json:"download,omitzero"`
}

// Phase is how far a pending job got; each is saved before the step it
// names.
type Phase string

// The phases of a pending job, in order, and what a restarted agent does
// in each.
const (
	// PhaseInstalling: the install (and the configuration) may have begun,
	// and may or may not have switched the boot. A restarted agent rolls
	// it back, restores the previous configuration, reboots when the
	// device may run the new bundle, and reports FAILED
	// (install.interrupted).
	PhaseInstalling Phase = "installing"
	// PhaseInstalled: installed and configured, the device boots the new
	// bundle. A restarted agent runs the health check, then commits or
	// rolls back (as after every reboot).
	PhaseInstalled Phase = "installed"
	// PhaseCommitting: the health check passed. A restarted agent commits
	// (again) and reports SUCCEEDED.
	PhaseCommitting Phase = "committing"
	// PhaseRollingBack: the job failed after its install and Failure says
	// how. A restarted agent rolls back (again), restores the previous
	// configuration and reports Failure.
	PhaseRollingBack Phase = "rolling_back"
)

// StateStore keeps Persisted durably. Save must be atomic: after a crash
// Load returns either the old or the new value.
type StateStore interface {
	Load(ctx context.Context) (Persisted, error)
	Save(ctx context.Context, p Persisted) error
}

// FileStore keeps the state in one JSON file, replaced atomically.
type FileStore struct{ Path string }

// Load implements StateStore; a missing file is the empty state.
func (s FileStore) Load(context.Context) (Persisted, error) {
	var p Persisted
	raw, err := os.ReadFile(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return p, fmt.Errorf("agent state: %w", err)
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return p, fmt.Errorf("agent state %s: %w", s.Path, err)
	}
	return p, nil
}

// Save implements StateStore.
func (s FileStore) Save(_ context.Context, p Persisted) error {
	raw, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("agent state: %w", err)
	}
	return writeFileAtomic(s.Path, raw, 0o600)
}

// MemoryStore keeps the state in memory: it survives an in-process restart
// (ErrRestart), as a simulated device's disk. Safe for concurrent use.
type MemoryStore struct {
	mu sync.Mutex
	p  []byte
}

// Load implements StateStore.
func (s *MemoryStore) Load(context.Context) (Persisted, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var p Persisted
	if s.p == nil {
		return p, nil
	}
	err := json.Unmarshal(s.p, &p)
	return p, err
}

// Save implements StateStore.
func (s *MemoryStore) Save(_ context.Context, p Persisted) error {
	raw, err := json.Marshal(p)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.p = raw
	s.mu.Unlock()
	return nil
}
