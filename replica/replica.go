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
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryhq/ferry/inventory"
	"github.com/ferryhq/ferry/store"
)

// Config holds the replica's dependencies. Zero fields get defaults.
type Config struct {
	// Devices is the store; required.
	Devices store.Devices
	// Changes carries change notices between ferryd instances. When nil,
	// notices stay in this process.
	Changes store.Changes
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
	// MaxRetries bounds compare-and-set retries under contention (default 16).
	MaxRetries int
	// SeenFlush is how often, at most, the last-seen times Seen collects
	// are written to the store, in one batch (store.Devices.MarkSeen),
	// whatever the number of devices (default DefaultSeenFlush).
	SeenFlush time.Duration
}

// DefaultSeenFlush is how often last-seen times are written by default.
const DefaultSeenFlush = time.Second

// Service is the replica. It is safe for concurrent use.
type Service struct {
	devices    store.Devices
	changes    store.Changes
	log        *slog.Logger
	now        func() time.Time
	maxRetries int
	seenFlush  time.Duration
	hub        hub
	holds      holdLocks
	seen       seenBuffer
	// leaving is set by Leave: subscriptions ending from then on keep
	// their holds.
	leaving atomic.Bool
}

// New returns a replica on cfg.Devices.
func New(cfg Config) *Service {
	s := &Service{devices: cfg.Devices, changes: cfg.Changes, log: cfg.Logger, now: cfg.Now, maxRetries: cfg.MaxRetries}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.maxRetries <= 0 {
		s.maxRetries = 16
	}
	if s.seenFlush = cfg.SeenFlush; s.seenFlush <= 0 {
		s.seenFlush = DefaultSeenFlush
	}
	s.hub.subs = make(map[string]map[chan struct{}]struct{})
	return s
}

// Document is a desired document as an operator gives it.
type Document struct {
	Bundle store.Bundle
	Forced bool
	Config map[string]string
	// Consent, when set, makes the device ask before it installs and/or
	// reboots.
	Consent *store.ConsentPolicy
}

// desired is doc as the desired document of version, a new job, set by
// setBy at at.
func (doc Document) desired(version uint64, setBy string, at time.Time) store.Desired {
	return store.Desired{Version: version, JobID: newJobID(), Bundle: doc.Bundle, Forced: doc.Forced,
		Config: doc.Config, Consent: doc.Consent, SetBy: setBy, SetAt: at}
}

// State is what a device says it runs: evidence in a signed report, a
// claim in a Hello.
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
	d, err := s.devices.GetDevice(ctx, id)
	return d, store.NameDevice(id, err)
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
			return store.Device{}, store.NameDevice(id, err)
		}
		if expect != nil && cur.Desired.Version != *expect {
			return cur, fmt.Errorf("set desired state of %q: %w: version is %d, expected %d", id, store.ErrConflict, cur.Desired.Version, *expect)
		}
		next := doc.desired(cur.Desired.Version+1, setBy, s.now().UTC())
		ev := store.Event{Time: next.SetAt, Kind: EventDesiredSet, JobID: next.JobID, DesiredVersion: next.Version,
			Status: string(StatusQueued), Actor: setBy, Message: next.Bundle.TargetPath}
		dev, err := s.devices.SetDesired(ctx, id, cur.Desired.Version, next, store.Write{Event: ev})
		if errors.Is(err, store.ErrConflict) && expect == nil {
			continue
		}
		if err != nil {
			return dev, store.NameDevice(id, err)
		}
		s.log.InfoContext(ctx, "desired state set", "device", id, "version", next.Version, "job", next.JobID, "by", setBy)
		s.changed(ctx, id)
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
	// Attributes are what the device reports about itself (see package
	// inventory); they replace the stored ones when they differ.
	Attributes map[string]string
}

// Connect records that a device opened its stream: it registers the device
// if needed and records its agent version and the time. What the Hello says
// the device runs is unsigned, so it never replaces the state the device's
// accepted reports established: it is kept as the device's claim
// (Reported.Claim) when it differs from that state, with an EventHelloClaim
// in the history when the claim is new, and dropped when it agrees.
//
// A Hello that changes nothing (the same agent version, the same claim or
// none, the same attributes) costs one store read: no write and no change notice; its time is
// recorded as a last-seen time, in the next batch (see Seen). That is what
// a fleet reconnecting after a ferryd restart sends.
func (s *Service) Connect(ctx context.Context, id string, h Hello) (store.Device, error) {
	if err := h.State.validate("hello.reported"); err != nil {
		return store.Device{}, err
	}
	if err := validateText("hello.agent_version", h.AgentVersion); err != nil {
		return store.Device{}, err
	}
	if err := inventory.Validate(h.Attributes); err != nil {
		return store.Device{}, invalid("hello.attributes", "%v", err)
	}
	if err := validateDeviceID(id); err != nil {
		return store.Device{}, err
	}
	cur, err := s.devices.GetDevice(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		if _, err := s.Register(ctx, id, nil); err != nil {
			return store.Device{}, err
		}
	case err != nil:
		return store.Device{}, store.NameDevice(id, err)
	default:
		now := s.now().UTC()
		if _, _, changed := helloReported(id, h, cur, now); !changed {
			s.seen.add(id, now)
			return s.updateAttributes(ctx, cur, h.Attributes)
		}
	}
	dev, err := s.updateReported(ctx, id, func(cur store.Device) (store.Reported, store.Write, error) {
		r, w, _ := helloReported(id, h, cur, s.now().UTC())
		return r, w, nil
	})
	if err != nil {
		return dev, err
	}
	s.changed(ctx, id)
	return s.updateAttributes(ctx, dev, h.Attributes)
}

// SetAttributes replaces what a device reports about itself (its
// inventory, sent when it changes during a stream), if it differs from
// what is stored.
func (s *Service) SetAttributes(ctx context.Context, id string, attrs map[string]string) (store.Device, error) {
	if err := validateDeviceID(id); err != nil {
		return store.Device{}, err
	}
	if err := inventory.Validate(attrs); err != nil {
		return store.Device{}, invalid("inventory.attributes", "%v", err)
	}
	dev, changed, err := s.devices.SetAttributes(ctx, id, attrs)
	if err != nil {
		return dev, store.NameDevice(id, err)
	}
	if changed {
		s.changed(ctx, id)
	}
	return dev, nil
}

// updateAttributes writes attrs unless dev (as just read or written) has
// them already: an unchanged inventory costs no write.
func (s *Service) updateAttributes(ctx context.Context, dev store.Device, attrs map[string]string) (store.Device, error) {
	if len(attrs) == 0 && len(dev.Attributes) == 0 || maps.Equal(dev.Attributes, attrs) {
		return dev, nil
	}
	next, changed, err := s.devices.SetAttributes(ctx, dev.ID, attrs)
	if err != nil {
		return dev, store.NameDevice(dev.ID, err)
	}
	if changed {
		s.changed(ctx, dev.ID)
	}
	return next, nil
}

// helloReported is the reported document after Hello h at time now, the
// history event to write with it, and whether anything but the last-seen
// time changed.
func helloReported(id string, h Hello, cur store.Device, now time.Time) (store.Reported, store.Write, bool) {
	r := cur.Reported
	r.AgentVersion = h.AgentVersion
	r.LastSeen = now
	var w store.Write
	changed := h.AgentVersion != cur.Reported.AgentVersion
	if h.State.matches(r.Bundle, r.Config) {
		changed = changed || r.Claim != nil
		r.Claim = nil
		return r, w, changed
	}
	claim := &store.Claim{Bundle: h.State.Bundle, Config: h.State.Config, LastApplied: h.LastApplied, At: now}
	if prev := r.Claim; prev == nil || !h.State.matches(prev.Bundle, prev.Config) {
		w.Event = store.Event{Time: now, Kind: EventHelloClaim, Actor: "device:" + id, Message: describeClaim(h, r)}
		changed = true
	} else if prev.LastApplied != h.LastApplied {
		changed = true
	}
	r.Claim = claim
	return r, w, changed
}

// matches reports whether the state names bundle b and configuration c.
func (st State) matches(b store.Bundle, c map[string]string) bool {
	return st.Bundle == b && maps.Equal(st.Config, c)
}

// describeClaim says in words how a Hello differs from the verified state.
func describeClaim(h Hello, r store.Reported) string {
	name := func(b store.Bundle) string {
		if b.IsZero() {
			return "no bundle"
		}
		return b.TargetPath
	}
	msg := "unsigned Hello says the device runs " + name(h.State.Bundle)
	if h.State.Bundle == r.Bundle {
		msg += " with other configuration"
	}
	return fmt.Sprintf("%s (last applied desired version %d); its accepted reports say %s at desired version %d",
		msg, h.LastApplied, name(r.Bundle), r.DesiredVersion)
}

// Seen records that a device is still there (it answered a ping on its
// stream): its last-seen time, kept in memory and written with the others
// in one batch at most every Config.SeenFlush (see Run and Flush). It is
// how rollouts tell that a device kept reporting through a soak, and how
// the fleet summary tells silent devices from quiet ones. A heartbeat
// writes no version, event or change notice.
func (s *Service) Seen(ctx context.Context, id string) error {
	if err := validateDeviceID(id); err != nil {
		return err
	}
	s.seen.add(id, s.now().UTC())
	return nil
}

// errUnchanged ends a compare-and-set loop that has nothing to write.
var errUnchanged = errors.New("unchanged")

// Event kinds of a device's history.
const (
	EventDesiredSet    = "desired_set"    // an operator set a new desired state (job QUEUED)
	EventJobProgress   = "job_progress"   // the device's job reached a step (IN_PROGRESS)
	EventJobEnded      = "job_ended"      // the device reported how the job ended
	EventJobSuperseded = "job_superseded" // the device reported on a job already replaced
	EventJobRepeated   = "job_repeated"   // the device repeated its report of a job it had ended, after a claim
	EventHelloClaim    = "hello_claim"    // the device's Hello said it runs something its reports do not
)

// ListEvents returns up to limit of a device's events with a sequence
// number below before (0: from the newest), newest first.
func (s *Service) ListEvents(ctx context.Context, id string, before uint64, limit int) ([]store.Event, error) {
	if err := validateDeviceID(id); err != nil {
		return nil, err
	}
	events, err := s.devices.ListEvents(ctx, id, before, limit)
	return events, store.NameDevice(id, err)
}

// GetAttestation returns the signed report a device sent for a job.
func (s *Service) GetAttestation(ctx context.Context, id, jobID string) (store.Attestation, error) {
	if err := validateDeviceID(id); err != nil {
		return store.Attestation{}, err
	}
	if err := validateText("job_id", jobID); err != nil || jobID == "" {
		return store.Attestation{}, invalid("job_id", "is required")
	}
	a, err := s.devices.GetAttestation(ctx, id, jobID)
	return a, store.NameDevice(id, err)
}

// changed tells this and every other instance that device id changed.
// With a store.Changes, the store announced the write itself, and the
// notice comes back through Run.
func (s *Service) changed(_ context.Context, id string) {
	if s.changes == nil {
		s.hub.notify(id)
	}
}

// Run delivers change notices from other instances (and this one) to the
// subscribers in this process, and writes the last-seen times Seen
// collects, until ctx ends; then it writes the last of them.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { s.flushLoop(ctx) })
	defer wg.Wait()
	if s.changes == nil {
		<-ctx.Done()
		return nil
	}
	for ctx.Err() == nil {
		err := s.changes.SubscribeChanges(ctx, s.hub.notify)
		if err != nil && ctx.Err() == nil {
			s.log.WarnContext(ctx, "change notices interrupted; retrying", "err", err)
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
		}
	}
	return nil
}

// updateReported runs a compare-and-set loop on the reported document.
func (s *Service) updateReported(ctx context.Context, id string, next func(store.Device) (store.Reported, store.Write, error)) (store.Device, error) {
	for range s.maxRetries {
		cur, err := s.devices.GetDevice(ctx, id)
		if err != nil {
			return store.Device{}, err
		}
		r, w, err := next(cur)
		if err != nil {
			return cur, err
		}
		r.Version = cur.Reported.Version + 1
		dev, err := s.devices.SetReported(ctx, id, cur.Reported.Version, r, w)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		return dev, err
	}
	return store.Device{}, fmt.Errorf("update reported state of %q: %w: gave up after %d attempts", id, store.ErrConflict, s.maxRetries)
}

// ChangedFields lists the fields of the desired document that differ from
// what the device last said it runs: "bundle", "forced", "config.<key>",
// sorted. That is its Hello's claim when it made one after its last
// accepted report, else the accepted state.
func ChangedFields(d store.Desired, r store.Reported) []string {
	bundle, config := r.Bundle, r.Config
	if c := r.Claim; c != nil {
		bundle, config = c.Bundle, c.Config
	}
	var out []string
	if !d.Bundle.IsZero() && d.Bundle != bundle {
		out = append(out, "bundle")
	}
	if d.Forced {
		out = append(out, "forced")
	}
	keys := maps.Keys(d.Config)
	for _, k := range slices.Sorted(keys) {
		if v, ok := config[k]; !ok || v != d.Config[k] {
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
