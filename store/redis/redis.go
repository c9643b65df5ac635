// Package redis is Ferry's production store on Redis (go-redis v9), shared by
// any number of ferryd instances, on a single server, behind Sentinel or on a
// Redis Cluster.
//
// Devices are spread over 256 buckets chosen from the device id (bucket.go).
// Every key of a device, and its entries in the fleet's indexes and
// counters, carry its bucket's hash tag "{bNNN}", so one Lua script writes a
// device's document, history, attestation, indexes and counters atomically
// on one cluster slot, and a cluster spreads the buckets, and so the load,
// over its masters. Listings and the fleet summary scatter over the 256
// buckets in one pipeline (go-redis sends it per master) and merge.
// Rollout documents and leases stay small in "{rollouts}"; a rollout's
// executions live in the bucket of their device. docs/architecture.md
// gives the layout and the reason for each hash tag; the keys are in
// device.go, index.go and rollout.go.
package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// Store is a store.Devices on Redis. It is safe for concurrent use.
type Store struct {
	rdb    goredis.UniversalClient
	prefix string
	owned  bool
	now    func() time.Time
	log    *slog.Logger // background work's warnings (see SetLogger)

	// minReplicas and waitTimeout: see SetMinReplicas.
	minReplicas int
	waitTimeout time.Duration

	// fenceMu guards raised: the newest fencing token of each lease that
	// every bucket has been told of (see AcquireLease).
	fenceMu sync.Mutex
	raised  map[string]uint64

	n notices // change notices (notices.go)

	pipe autoPipe // automatic pipelining (autopipe.go)
}

var (
	_ store.Devices = (*Store)(nil)
	_ store.Changes = (*Store)(nil)
)

// New returns a Store on an existing client (single node, Sentinel or
// Cluster). Close does not close a client passed to New. New adds a hook
// to rdb that marks outage errors as store.ErrUnavailable (unavailable.go).
func New(rdb goredis.UniversalClient, prefix string) *Store {
	if prefix == "" {
		prefix = "ferry:"
	}
	rdb.AddHook(unavailableHook{}) // outages become store.ErrUnavailable (unavailable.go)
	return &Store{rdb: rdb, prefix: prefix, now: time.Now, raised: map[string]uint64{}}
}

// SetClock sets the wall clock the store turns expiry times into key TTLs
// with (time.Now by default; see the credential keys). Tests give it their
// test clock. Call it before the store is used.
func (s *Store) SetClock(now func() time.Time) { s.now = now }

// SetLogger sets where the store's background work (sending change
// notices) logs what it gives up on; by default nothing is logged. Call it
// before the store is used.
func (s *Store) SetLogger(log *slog.Logger) { s.log = log }

func (s *Store) logger() *slog.Logger {
	if s.log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.log
}

// Close closes the client if Open created it.
func (s *Store) Close() error {
	if s.owned {
		return s.rdb.Close()
	}
	return nil
}

// meta is the part of a device that is not versioned.
type meta struct {
	ID        string            `json:"id"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"created_at,omitzero"`
}

// GetDevice implements store.Devices.
func (s *Store) GetDevice(ctx context.Context, id string) (store.Device, error) {
	args := []any{"hmget", s.deviceKey(id)}
	for _, f := range docFields {
		args = append(args, f)
	}
	r := &pipeReq{args: args}
	if err := s.do(ctx, r); err != nil {
		return store.Device{}, fmt.Errorf("get device %q: %w", id, err)
	}
	vals, err := r.cmd.Slice()
	if err != nil {
		return store.Device{}, fmt.Errorf("get device %q: %w", id, err)
	}
	d, err := decodeValues(vals)
	if err != nil {
		return store.Device{}, fmt.Errorf("get device %q: %w", id, err)
	}
	return d, nil
}

func encode(d store.Device) (m, desired, reported []byte, err error) {
	if m, err = encodeDoc(meta{ID: d.ID, Labels: d.Labels, CreatedAt: d.CreatedAt}); err != nil {
		return nil, nil, nil, err
	}
	if desired, err = encodeDoc(d.Desired); err != nil {
		return nil, nil, nil, err
	}
	if reported, err = encodeDoc(d.Reported); err != nil {
		return nil, nil, nil, err
	}
	return m, desired, reported, nil
}

// docFields are the fields of a device hash that make up store.Device:
// meta, the two documents, the time MarkSeen last recorded ("" if
// none) and the attributes ("" if none).
var docFields = []string{"meta", "d", "r", "ls", "at"}

// decodeValues decodes an HMGET of docFields; a missing hash gives nils.
func decodeValues(vals []any) (store.Device, error) {
	fields := make([]string, len(vals))
	for i, v := range vals {
		s, ok := v.(string)
		if !ok && i < 3 {
			return store.Device{}, store.ErrNotFound
		}
		fields[i] = s
	}
	return decodeFields(fields)
}

// decodeStored decodes what the device scripts' stored() returns: the
// outcome, docFields but the attributes, the holder, the attributes.
func decodeStored(res []string) (store.Device, error) {
	if len(res) < 7 {
		return store.Device{}, store.ErrNotFound
	}
	return decodeFields(append(slices.Clone(res[1:5]), res[6]))
}

// decodeFields decodes meta, desired, reported, the marked last-seen
// time (may be "") and the attributes (may be "").
func decodeFields(f []string) (store.Device, error) {
	if len(f) != 5 {
		return store.Device{}, store.ErrNotFound
	}
	var (
		m meta
		d store.Device
	)
	if err := decodeDoc([]byte(f[0]), &m); err != nil {
		return store.Device{}, fmt.Errorf("decode meta: %w", err)
	}
	d.ID, d.Labels, d.CreatedAt = m.ID, m.Labels, m.CreatedAt
	if err := decodeDoc([]byte(f[1]), &d.Desired); err != nil {
		return store.Device{}, fmt.Errorf("decode desired: %w", err)
	}
	if err := decodeDoc([]byte(f[2]), &d.Reported); err != nil {
		return store.Device{}, fmt.Errorf("decode reported: %w", err)
	}
	if f[4] != "" {
		if err := decodeDoc([]byte(f[4]), &d.Attributes); err != nil {
			return store.Device{}, fmt.Errorf("decode attributes: %w", err)
		}
	}
	if f[3] != "" {
		ns, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			return store.Device{}, fmt.Errorf("decode last seen: %w", err)
		}
		if marked := time.Unix(0, ns); marked.After(d.Reported.LastSeen) {
			d.Reported.LastSeen = marked
		}
	}
	return d, nil
}

// ListEvents implements store.Devices. The history list holds consecutive
// sequence numbers, newest first, so the page start is computed, not
// searched.
func (s *Store) ListEvents(ctx context.Context, id string, before uint64, limit int) ([]store.Event, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("list events: limit %d must be positive", limit)
	}
	vals, err := s.rdb.HMGet(ctx, s.deviceKey(id), "meta", "es").Result()
	if err != nil {
		return nil, fmt.Errorf("list events of %q: %w", id, err)
	}
	if vals[0] == nil {
		return nil, fmt.Errorf("list events of %q: %w", id, store.ErrNotFound)
	}
	var last uint64
	if v, ok := vals[1].(string); ok {
		last, _ = strconv.ParseUint(v, 10, 64)
	}
	start := uint64(0)
	if before != 0 {
		if before > last {
			before = last + 1
		}
		start = last + 1 - before
	}
	if start >= store.MaxEvents {
		return nil, nil
	}
	raw, err := s.rdb.LRange(ctx, s.eventsKey(id), int64(start), int64(start)+int64(limit)-1).Result()
	if err != nil {
		return nil, fmt.Errorf("list events of %q: %w", id, err)
	}
	out := make([]store.Event, 0, len(raw))
	for _, r := range raw {
		seq, js, ok := strings.Cut(r, " ")
		if !ok {
			return nil, fmt.Errorf("list events of %q: malformed entry", id)
		}
		var ev store.Event
		if err := decodeDoc([]byte(js), &ev); err != nil {
			return nil, fmt.Errorf("list events of %q: %w", id, err)
		}
		ev.Seq, _ = strconv.ParseUint(seq, 10, 64)
		out = append(out, ev)
	}
	return out, nil
}

// GetAttestation implements store.Devices.
func (s *Store) GetAttestation(ctx context.Context, id, jobID string) (store.Attestation, error) {
	raw, err := s.rdb.HGet(ctx, s.attKey(id), jobID).Bytes()
	if errors.Is(err, goredis.Nil) {
		if n, err := s.rdb.Exists(ctx, s.deviceKey(id)).Result(); err == nil && n == 0 {
			return store.Attestation{}, fmt.Errorf("get attestation of %q: %w", id, store.ErrNotFound)
		}
		return store.Attestation{}, fmt.Errorf("get attestation of %q job %q: %w", id, jobID, store.ErrNoAttestation)
	}
	if err != nil {
		return store.Attestation{}, fmt.Errorf("get attestation of %q job %q: %w", id, jobID, err)
	}
	var a store.Attestation
	if err := decodeDoc(raw, &a); err != nil {
		return store.Attestation{}, fmt.Errorf("get attestation of %q job %q: %w", id, jobID, err)
	}
	return a, nil
}
