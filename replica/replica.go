// Package replica is the device state replica: each device's desired and
// reported documents, their versions, the deltas between them, and the
// reports devices send back.
//
// Desired versions only grow. A report names the desired version it answers;
// the replica records it only if it is not older than what it already holds,
// so nothing is overwritten silently. Writers are told of changes through
// Subscribe, a 1-buffered "something changed" channel per device after which
// the reader recomputes from the store.
package replica

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/ferryhq/ferry/store"
)

// Config holds the replica's dependencies. Zero fields get defaults.
type Config struct {
	// Devices is the store; required.
	Devices store.Devices
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
	// MaxRetries bounds compare-and-set retries under contention (default 16).
	MaxRetries int
}

// Service is the replica. It is safe for concurrent use.
type Service struct {
	devices    store.Devices
	log        *slog.Logger
	now        func() time.Time
	maxRetries int
	hub        hub
}

// New returns a replica on cfg.Devices.
func New(cfg Config) *Service {
	s := &Service{devices: cfg.Devices, log: cfg.Logger, now: cfg.Now, maxRetries: cfg.MaxRetries}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.maxRetries <= 0 {
		s.maxRetries = 16
	}
	s.hub.subs = make(map[string]map[chan struct{}]struct{})
	return s
}

// Document is a desired document as an operator gives it.
type Document struct {
	Bundle store.Bundle
	Forced bool
	Config map[string]string
}

// State is what a device says it runs.
type State struct {
	Bundle store.Bundle
	Config map[string]string
}

// Register creates a device if it does not exist yet. It is idempotent.
func (s *Service) Register(ctx context.Context, id string, labels map[string]string) (store.Device, error) {
	if err := validateDeviceID(id); err != nil {
		return store.Device{}, err
	}
	d, _, err := s.devices.CreateDevice(ctx, store.Device{ID: id, Labels: labels, CreatedAt: s.now()})
	return d, err
}

// GetDevice returns one device.
func (s *Service) GetDevice(ctx context.Context, id string) (store.Device, error) {
	if err := validateDeviceID(id); err != nil {
		return store.Device{}, err
	}
	return s.devices.GetDevice(ctx, id)
}

// ListDevices returns up to limit devices with ids after after.
func (s *Service) ListDevices(ctx context.Context, after string, limit int) ([]store.Device, error) {
	return s.devices.ListDevices(ctx, store.ListOptions{After: after, Limit: limit})
}

// SetDesired gives device id a new desired document, one version above the
// current one, with a new job id. With expect set, it applies only if the
// current desired version is *expect (else store.ErrConflict); without, it
// retries through concurrent changes. Subscribers of the device are told.
func (s *Service) SetDesired(ctx context.Context, id string, doc Document, setBy string, expect *uint64) (store.Device, error) {
	if err := validateDeviceID(id); err != nil {
		return store.Device{}, err
	}
	if err := doc.Validate(); err != nil {
		return store.Device{}, err
	}
	for range s.maxRetries {
		cur, err := s.devices.GetDevice(ctx, id)
		if err != nil {
			return store.Device{}, err
		}
		if expect != nil && cur.Desired.Version != *expect {
			return cur, fmt.Errorf("set desired state of %q: %w: version is %d, expected %d", id, store.ErrConflict, cur.Desired.Version, *expect)
		}
		next := store.Desired{
			Version: cur.Desired.Version + 1,
			JobID:   newJobID(),
			Bundle:  doc.Bundle,
			Forced:  doc.Forced,
			Config:  doc.Config,
			SetBy:   setBy,
			SetAt:   s.now().UTC(),
		}
		dev, err := s.devices.SetDesired(ctx, id, cur.Desired.Version, next)
		if errors.Is(err, store.ErrConflict) && expect == nil {
			continue
		}
		if err != nil {
			return dev, err
		}
		s.log.InfoContext(ctx, "desired state set", "device", id, "version", next.Version, "job", next.JobID, "by", setBy)
		s.hub.notify(id)
		return dev, nil
	}
	return store.Device{}, fmt.Errorf("set desired state of %q: %w: gave up after %d attempts", id, store.ErrConflict, s.maxRetries)
}

// Hello is what a device says when it opens its stream.
type Hello struct {
	AgentVersion string
	// LastApplied is the desired version the device last applied.
	LastApplied uint64
	State       State
}

// Connect records that a device opened its stream: it registers the device
// if needed and records its agent version, what it runs, and the time.
func (s *Service) Connect(ctx context.Context, id string, h Hello) (store.Device, error) {
	if err := h.State.validate("hello.reported"); err != nil {
		return store.Device{}, err
	}
	if _, err := s.Register(ctx, id, nil); err != nil {
		return store.Device{}, err
	}
	return s.updateReported(ctx, id, func(cur store.Device) (store.Reported, error) {
		r := cur.Reported
		r.AgentVersion = h.AgentVersion
		r.Bundle, r.Config = h.State.Bundle, h.State.Config
		r.LastSeen = s.now().UTC()
		return r, nil
	})
}

// updateReported runs a compare-and-set loop on the reported document.
func (s *Service) updateReported(ctx context.Context, id string, next func(store.Device) (store.Reported, error)) (store.Device, error) {
	for range s.maxRetries {
		cur, err := s.devices.GetDevice(ctx, id)
		if err != nil {
			return store.Device{}, err
		}
		r, err := next(cur)
		if err != nil {
			return cur, err
		}
		r.Version = cur.Reported.Version + 1
		dev, err := s.devices.SetReported(ctx, id, cur.Reported.Version, r)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		return dev, err
	}
	return store.Device{}, fmt.Errorf("update reported state of %q: %w: gave up after %d attempts", id, store.ErrConflict, s.maxRetries)
}

// Subscribe returns a channel that receives a value whenever device id's
// desired state may have changed, and a function that ends the
// subscription. The channel has a buffer of one: a slow reader misses no
// change, it sees several as one and reads the current state once.
func (s *Service) Subscribe(id string) (<-chan struct{}, func()) {
	return s.hub.subscribe(id)
}

// ChangedFields lists the fields of the desired document that differ from
// what the device reported: "bundle", "forced", "config.<key>", sorted.
func ChangedFields(d store.Desired, r store.Reported) []string {
	var out []string
	if !d.Bundle.IsZero() && d.Bundle != r.Bundle {
		out = append(out, "bundle")
	}
	if d.Forced {
		out = append(out, "forced")
	}
	keys := maps.Keys(d.Config)
	for _, k := range slices.Sorted(keys) {
		if v, ok := r.Config[k]; !ok || v != d.Config[k] {
			out = append(out, "config."+k)
		}
	}
	sort.Strings(out)
	return out
}

func newJobID() string {
	b := make([]byte, 10)
	rand.Read(b)
	return "job-" + hex.EncodeToString(b)
}
