package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/ferryhq/ferry/store"
)

// indexEntries returns d's keys in the index bucket.
func indexEntries(d *store.Device) [][]byte {
	out := [][]byte{
		indexKey("s", d.JobStatus(), d.ID),
		indexKey("b", d.BundleKey(), d.ID),
	}
	for k, v := range d.Labels {
		out = append(out, indexKey("l", k+"="+v, d.ID))
	}
	for k, v := range d.Attributes {
		out = append(out, indexKey("a", k+"="+v, d.ID))
	}
	return out
}

func indexKey(kind, value, id string) []byte {
	return []byte(kind + "\x00" + value + "\x00" + id)
}

func seenKey(d *store.Device) []byte {
	var ns uint64
	if !d.Reported.LastSeen.IsZero() {
		ns = uint64(d.Reported.LastSeen.UnixNano())
	}
	return append(binary.BigEndian.AppendUint64(nil, ns), d.ID...)
}

// reindex moves the device's index entries and counters from old (nil for
// a new device) to cur.
func reindex(tx *bbolt.Tx, old, cur *store.Device) error {
	idx, seen, counts := tx.Bucket(indexBucket), tx.Bucket(seenBucket), tx.Bucket(countsBucket)
	var was [][]byte
	if old != nil {
		was = indexEntries(old)
		if err := seen.Delete(seenKey(old)); err != nil {
			return err
		}
	} else if err := add(counts, []byte("total"), 1); err != nil {
		return err
	}
	now := indexEntries(cur)
	for _, k := range was {
		if !slices.ContainsFunc(now, func(n []byte) bool { return bytes.Equal(n, k) }) {
			if err := idx.Delete(k); err != nil {
				return err
			}
			if err := countEntry(counts, k, -1); err != nil {
				return err
			}
		}
	}
	for _, k := range now {
		if !slices.ContainsFunc(was, func(o []byte) bool { return bytes.Equal(o, k) }) {
			if err := idx.Put(k, nil); err != nil {
				return err
			}
			if err := countEntry(counts, k, 1); err != nil {
				return err
			}
		}
	}
	return seen.Put(seenKey(cur), nil)
}

// countEntry adjusts the counter of a status or bundle index entry.
func countEntry(counts *bbolt.Bucket, entry []byte, delta int64) error {
	kind, rest, _ := bytes.Cut(entry, []byte{0})
	if string(kind) == "l" || string(kind) == "a" {
		return nil // labels and attributes are not summarised
	}
	value, _, _ := bytes.Cut(rest, []byte{0})
	key := slices.Concat(kind, []byte{0}, value)
	return add(counts, key, delta)
}

func add(b *bbolt.Bucket, key []byte, delta int64) error {
	var n int64
	if v := b.Get(key); v != nil {
		n = int64(binary.BigEndian.Uint64(v))
	}
	n += delta
	if n <= 0 {
		return b.Delete(key)
	}
	return b.Put(key, binary.BigEndian.AppendUint64(nil, uint64(n)))
}

// ListDevices implements store.Devices.
func (s *Store) ListDevices(ctx context.Context, opts store.ListOptions) ([]store.Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts.Limit <= 0 {
		return nil, fmt.Errorf("list devices: limit %d must be positive", opts.Limit)
	}
	q := opts.Query
	var prefixes [][]byte // of the indexes walked; none walks all devices
	switch {
	case q.Status != "":
		prefixes = [][]byte{indexKey("s", q.Status, "")}
	case q.Bundle != "":
		prefixes = [][]byte{indexKey("b", q.Bundle, "")}
	case len(q.Labels) > 0:
		keys := slices.Sorted(maps.Keys(q.Labels))
		prefixes = [][]byte{indexKey("l", keys[0]+"="+q.Labels[keys[0]], "")}
	default:
		if t, ok := q.SelectorIndex(); ok {
			kind := "l"
			if t.Kind == store.IndexAttribute {
				kind = "a"
			}
			for _, v := range t.Values {
				prefixes = append(prefixes, indexKey(kind, t.Key+"="+v, ""))
			}
		}
	}
	var out []store.Device
	err := s.db.View(func(tx *bbolt.Tx) error {
		devices := tx.Bucket(devicesBucket)
		var next func() []byte // the next id after opts.After, nil at the end
		if len(prefixes) == 0 {
			c := devices.Cursor()
			k, _ := c.Seek([]byte(opts.After))
			next = func() []byte {
				if k != nil && opts.After != "" && string(k) == opts.After {
					k, _ = c.Next()
				}
				id := k
				if k != nil {
					k, _ = c.Next()
				}
				return id
			}
		} else {
			next = mergeIndexes(tx.Bucket(indexBucket), prefixes, opts.After)
		}
		for id := next(); id != nil && len(out) < opts.Limit; id = next() {
			v := devices.Get(id)
			if v == nil {
				continue
			}
			var d store.Device
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("decode device %q: %w", id, err)
			}
			overlaySeen(tx, &d)
			if q.Match(d) {
				out = append(out, d)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// mergeIndexes walks the ids under several index prefixes (disjoint: the
// values of one key) in id order, from after on: it returns the next id
// on every call, nil once every prefix ended.
func mergeIndexes(idx *bbolt.Bucket, prefixes [][]byte, after string) func() []byte {
	type head struct {
		c      *bbolt.Cursor
		prefix []byte
		id     []byte
	}
	heads := make([]*head, 0, len(prefixes))
	step := func(h *head, k []byte) {
		for ; k != nil && bytes.HasPrefix(k, h.prefix); k, _ = h.c.Next() {
			if id := k[len(h.prefix):]; after == "" || string(id) != after {
				h.id = slices.Clone(id)
				return
			}
		}
		h.id = nil
	}
	for _, p := range prefixes {
		h := &head{c: idx.Cursor(), prefix: p}
		k, _ := h.c.Seek(append(slices.Clone(p), after...))
		step(h, k)
		heads = append(heads, h)
	}
	return func() []byte {
		var min *head
		for _, h := range heads {
			if h.id != nil && (min == nil || bytes.Compare(h.id, min.id) < 0) {
				min = h
			}
		}
		if min == nil {
			return nil
		}
		id := min.id
		k, _ := min.c.Next()
		step(min, k)
		return id
	}
}

// SetAttributes implements store.Devices.
func (s *Store) SetAttributes(ctx context.Context, id string, attrs map[string]string) (store.Device, bool, error) {
	if err := ctx.Err(); err != nil {
		return store.Device{}, false, err
	}
	if len(attrs) == 0 {
		attrs = nil
	}
	var (
		dev     store.Device
		changed bool
	)
	err := s.db.Update(func(tx *bbolt.Tx) error {
		changed = false
		b := tx.Bucket(devicesBucket)
		raw := b.Get([]byte(id))
		if raw == nil {
			return store.ErrNotFound
		}
		if err := json.Unmarshal(raw, &dev); err != nil {
			return err
		}
		overlaySeen(tx, &dev)
		if maps.Equal(dev.Attributes, attrs) {
			return nil
		}
		old := dev
		dev.Attributes = maps.Clone(attrs)
		out, err := json.Marshal(dev)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(id), out); err != nil {
			return err
		}
		changed = true
		return reindex(tx, &old, &dev)
	})
	if err != nil {
		return store.Device{}, false, fmt.Errorf("set attributes of %q: %w", id, err)
	}
	if changed {
		s.PublishChange(ctx, id)
	}
	return dev, changed, nil
}

// Summary implements store.Devices: counters, plus a walk of the devices
// not seen since silentBefore.
func (s *Store) Summary(ctx context.Context, silentBefore time.Time) (store.Summary, error) {
	if err := ctx.Err(); err != nil {
		return store.Summary{}, err
	}
	sum := store.Summary{PerBundle: map[string]uint64{}, PerStatus: map[string]uint64{}}
	err := s.db.View(func(tx *bbolt.Tx) error {
		err := tx.Bucket(countsBucket).ForEach(func(k, v []byte) error {
			n := binary.BigEndian.Uint64(v)
			kind, value, _ := strings.Cut(string(k), "\x00")
			switch kind {
			case "total":
				sum.Total = n
			case "s":
				sum.PerStatus[value] = n
			case "b":
				sum.PerBundle[value] = n
			}
			return nil
		})
		if err != nil {
			return err
		}
		limit := binary.BigEndian.AppendUint64(nil, uint64(max(silentBefore.UnixNano(), 0)))
		c := tx.Bucket(seenBucket).Cursor()
		for k, _ := c.First(); k != nil && bytes.Compare(k[:8], limit) < 0; k, _ = c.Next() {
			sum.Silent++
		}
		return nil
	})
	if err != nil {
		return store.Summary{}, fmt.Errorf("summary: %w", err)
	}
	return sum, nil
}
