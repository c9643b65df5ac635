package redis

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// Fleet indexes and counters, one set per bucket B, written by the device's
// write script together with the device (device.go):
//
//	B ids              sorted set (lex) of the bucket's device ids
//	B s:<status>       sorted set (lex) of ids with that job status
//	B b:<bundle>       sorted set (lex) of ids running that bundle
//	B l:<key>=<value>  sorted set (lex) of ids with that label
//	B a:<key>=<value>  sorted set (lex) of ids with that attribute
//	                   (written by SetAttributes, attributes.go)
//	B seen             sorted set of ids by last-seen (unix ms; 0 never)
//	B count            hash: n (devices), s:<status>, b:<bundle> -> count
//
// A listing walks one index in all 256 buckets at once and merges the
// pages in id order; the summary adds up the 256 count hashes.

// indexSuffixes are the bucket keys of the indexes a query walks: status,
// bundle, the first label in key order, the selector's index term (one
// key per value, disjoint), or every device.
func indexSuffixes(q store.Query) []string {
	switch {
	case q.Status != "":
		return []string{"s:" + q.Status}
	case q.Bundle != "":
		return []string{"b:" + q.Bundle}
	case len(q.Labels) > 0:
		keys := slices.Sorted(maps.Keys(q.Labels))
		return []string{"l:" + keys[0] + "=" + q.Labels[keys[0]]}
	}
	if t, ok := q.SelectorIndex(); ok {
		kind := "l:"
		if t.Kind == store.IndexAttribute {
			kind = "a:"
		}
		out := make([]string, len(t.Values))
		for i, v := range t.Values {
			out[i] = kind + t.Key + "=" + v
		}
		return out
	}
	return []string{"ids"}
}

// ListDevices implements store.Devices. It merges one index's ids from
// every bucket in id order (merger), reads the devices of each run of ids
// in one pipeline and keeps those that match the whole query, until the
// page is full or the index ends. The cursor is the last id returned, so
// pages stay stable whatever bucket a device is in.
func (s *Store) ListDevices(ctx context.Context, opts store.ListOptions) ([]store.Device, error) {
	if opts.Limit <= 0 {
		return nil, fmt.Errorf("list devices: limit %d must be positive", opts.Limit)
	}
	m := s.newMerger(indexSuffixes(opts.Query), opts.After)
	var out []store.Device
	for len(out) < opts.Limit {
		ids, err := m.next(ctx, opts.Limit-len(out))
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		if len(ids) == 0 {
			break
		}
		cmds := make([]*goredis.SliceCmd, len(ids))
		_, err = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = p.HMGet(ctx, s.deviceKey(id), docFields...)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		for _, c := range cmds {
			d, err := decodeValues(c.Val())
			if errors.Is(err, store.ErrNotFound) {
				continue // cannot happen: one script writes a device and its entries
			}
			if err != nil {
				return nil, fmt.Errorf("list devices: %w", err)
			}
			if opts.Query.Match(d) {
				out = append(out, d)
			}
		}
	}
	return out, nil
}

// merger walks one or more disjoint indexes of every bucket in id order:
// it keeps a buffer of the next ids of each bucket's index and refills, in
// one pipeline, the buffers that ran dry, so that the smallest id not yet
// returned is always in a buffer.
type merger struct {
	s     *Store
	heads []bucketHead
}

type bucketHead struct {
	key   string   // the index walked
	after string   // the last id read from the bucket ("" for none)
	buf   []string // ids read and not yet returned, in order
	done  bool     // the bucket's index has no ids after buf
}

func (s *Store) newMerger(suffixes []string, after string) *merger {
	m := &merger{s: s, heads: make([]bucketHead, 0, Buckets*len(suffixes))}
	for b := range Buckets {
		for _, suffix := range suffixes {
			m.heads = append(m.heads, bucketHead{key: s.bucketPrefix(b) + suffix, after: after})
		}
	}
	return m
}

// next returns up to n more ids in order; none once every index ended.
func (m *merger) next(ctx context.Context, n int) ([]string, error) {
	var out []string
	for len(out) < n {
		if err := m.refill(ctx, n-len(out)); err != nil {
			return nil, err
		}
		// Return ids while every bucket that may hold more has some
		// buffered: the smallest head is then the next id.
		for len(out) < n {
			min := -1
			for b := range m.heads {
				h := &m.heads[b]
				if len(h.buf) == 0 {
					if !h.done {
						min = -2 // must refill first
						break
					}
					continue
				}
				if min == -1 || h.buf[0] < m.heads[min].buf[0] {
					min = b
				}
			}
			if min == -2 {
				break
			}
			if min == -1 {
				return out, nil // every bucket ended
			}
			out = append(out, m.heads[min].buf[0])
			m.heads[min].buf = m.heads[min].buf[1:]
		}
	}
	return out, nil
}

// refill reads the next ids of every bucket whose buffer is empty and
// whose index did not end, in one pipeline, about twice a fair share of
// want from each.
func (m *merger) refill(ctx context.Context, want int) error {
	var dry []int
	for b := range m.heads {
		if len(m.heads[b].buf) == 0 && !m.heads[b].done {
			dry = append(dry, b)
		}
	}
	if len(dry) == 0 {
		return nil
	}
	chunk := int64(max(4, 2*want/len(dry)+1))
	cmds := make([]*goredis.StringSliceCmd, len(dry))
	_, err := m.s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, b := range dry {
			start := "-"
			if a := m.heads[b].after; a != "" {
				start = "(" + a
			}
			cmds[i] = p.ZRangeArgs(ctx, goredis.ZRangeArgs{
				Key: m.heads[b].key, Start: start, Stop: "+", ByLex: true, Count: chunk,
			})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i, b := range dry {
		ids := cmds[i].Val()
		h := &m.heads[b]
		h.buf = ids
		h.done = int64(len(ids)) < chunk
		if len(ids) > 0 {
			h.after = ids[len(ids)-1]
		}
	}
	return nil
}

// Summary implements store.Devices from the buckets' counters and seen
// indexes: one pipeline of 512 small commands whatever the fleet's size.
func (s *Store) Summary(ctx context.Context, silentBefore time.Time) (store.Summary, error) {
	counts := make([]*goredis.MapStringStringCmd, Buckets)
	silent := make([]*goredis.IntCmd, Buckets)
	below := fmt.Sprintf("(%d", silentBefore.UnixMilli())
	_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for b := range Buckets {
			counts[b] = p.HGetAll(ctx, s.bucketPrefix(b)+"count")
			silent[b] = p.ZCount(ctx, s.bucketPrefix(b)+"seen", "-inf", below)
		}
		return nil
	})
	if err != nil {
		return store.Summary{}, fmt.Errorf("summary: %w", err)
	}
	sum := store.Summary{PerStatus: map[string]uint64{}, PerBundle: map[string]uint64{}}
	for b := range Buckets {
		sum.Silent += uint64(silent[b].Val())
		for field, v := range counts[b].Val() {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return store.Summary{}, fmt.Errorf("summary: counter %q: %w", field, err)
			}
			if n <= 0 {
				continue
			}
			switch {
			case field == "n":
				sum.Total += uint64(n)
			case strings.HasPrefix(field, "s:"):
				sum.PerStatus[field[2:]] += uint64(n)
			case strings.HasPrefix(field, "b:"):
				sum.PerBundle[field[2:]] += uint64(n)
			}
		}
	}
	return sum, nil
}
