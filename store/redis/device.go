package redis

import (
	"context"
	"fmt"
	"strconv"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// A device's keys, all in its bucket B = "<prefix>{bNNN}:" (see bucket.go):
//
//	B dev:<id>  hash: meta (JSON), d (desired JSON), dv (desired version),
//	            r (reported JSON), rv (reported version), es (last event
//	            seq), jv, js, bk (the reported job's desired version and
//	            status, and the bundle key: what the job status and the
//	            bundle index derive from), xs, xb (the status and bundle
//	            the device is indexed and counted under), ls (the latest
//	            MarkSeen time, unix ns, 20 digits), lm (the same in ms),
//	            at (the attributes, JSON; absent for none)
//	B ev:<id>   list of "<seq> <event JSON>", newest first, capped
//	B att:<id>  hash: job id -> attestation JSON
//
// and its entries in the bucket's indexes and counters (index.go).

func (s *Store) deviceKey(id string) string { return s.deviceBucket(id) + "dev:" + id }
func (s *Store) eventsKey(id string) string { return s.deviceBucket(id) + "ev:" + id }
func (s *Store) attKey(id string) string    { return s.deviceBucket(id) + "att:" + id }

// reindexLua is the Lua preamble of the device write scripts: reindex
// moves the device's entries in its bucket's status and bundle indexes and
// counters to the job status and bundle it has now (the rule of
// store.Device.JobStatus and BundleKey, on the dv, jv, js and bk fields),
// and sets its seen entry to the later of seen (unix ms of the reported
// document's LastSeen) and the marked time (lm), when seen is given. Every key is in
// bucket B.
const reindexLua = `
local function counter(B, field, delta)
  if redis.call('HINCRBY', B .. 'count', field, delta) <= 0 then
    redis.call('HDEL', B .. 'count', field)
  end
end
local function reindex(B, id, dk, none, seen)
  local f = redis.call('HMGET', dk, 'dv', 'jv', 'js', 'bk', 'xs', 'xb')
  local dv, jv = tonumber(f[1]) or 0, tonumber(f[2]) or 0
  local status = none
  if dv > 0 and dv > jv then
    status = 'QUEUED'
  elseif f[3] and f[3] ~= '' then
    status = f[3]
  end
  if f[5] ~= status then
    if f[5] then
      redis.call('ZREM', B .. 's:' .. f[5], id)
      counter(B, 's:' .. f[5], -1)
    end
    redis.call('ZADD', B .. 's:' .. status, 0, id)
    counter(B, 's:' .. status, 1)
    redis.call('HSET', dk, 'xs', status)
  end
  local bundle = f[4]
  if f[6] ~= bundle then
    if f[6] then
      redis.call('ZREM', B .. 'b:' .. f[6], id)
      counter(B, 'b:' .. f[6], -1)
    end
    redis.call('ZADD', B .. 'b:' .. bundle, 0, id)
    counter(B, 'b:' .. bundle, 1)
    redis.call('HSET', dk, 'xb', bundle)
  end
  if seen then
    local marked = tonumber(redis.call('HGET', dk, 'lm') or '0')
    redis.call('ZADD', B .. 'seen', math.max(tonumber(seen), marked), id)
  end
end
local function stored(B, id, dk, res, skip)
  local v = redis.call('HMGET', dk, 'meta', 'd', 'r', 'ls')
  if skip == 'd' then v[2] = '' elseif skip == 'r' then v[3] = '' end
  return {res, v[1], v[2], v[3], v[4] or '', redis.call('HGET', B .. 'holders', id) or '',
    redis.call('HGET', dk, 'at') or ''}
end
`

// createScript stores a new device unless one exists, with its id, label,
// status and bundle index entries and the bucket's counters, and returns
// the stored fields and the device's holder.
// KEYS: device hash. ARGV: bucket prefix, id, meta, desired, reported, job
// desired version, job status, bundle key, seen (ms), store.StatusNone,
// then "<key>=<value>" of each label.
var createScript = goredis.NewScript(reindexLua + `
local dk, B, id = KEYS[1], ARGV[1], ARGV[2]
if redis.call('EXISTS', dk) == 1 then
  return stored(B, id, dk, 'exists')
end
redis.call('HSET', dk, 'meta', ARGV[3], 'd', ARGV[4], 'dv', '0', 'r', ARGV[5], 'rv', '0',
  'jv', ARGV[6], 'js', ARGV[7], 'bk', ARGV[8])
redis.call('ZADD', B .. 'ids', 0, id)
counter(B, 'n', 1)
for i = 11, #ARGV do
  redis.call('ZADD', B .. 'l:' .. ARGV[i], 0, id)
end
reindex(B, id, dk, ARGV[10], ARGV[9])
return stored(B, id, dk, 'created')
`)

// casScript replaces one versioned document of a device if its version is
// still expect, appends the event (if any) to the capped history, stores
// the attestation (if any), and moves the index entries and counters, all
// at once. A repeat of a write that already landed (same new version, same
// bytes) succeeds without writing anything. It returns the outcome, the
// stored fields (on success without the document just written, which the
// caller has) and the device's holder.
// KEYS: device hash, events list, attestations hash. ARGV: bucket prefix,
// id, version field, document field, expect, next, document, event, cap,
// attestation job, attestation, then for the reported document "r", job
// desired version, job status, bundle key, seen (ms) (else "-" and four
// empty strings), and store.StatusNone.
var casScript = goredis.NewScript(reindexLua + `
local dk, B, id = KEYS[1], ARGV[1], ARGV[2]
if redis.call('EXISTS', dk) == 0 then
  return {'missing'}
end
local vf, df, expect, nextv, doc = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local ev, cap, attJob, att = ARGV[8], tonumber(ARGV[9]), ARGV[10], ARGV[11]
local cur = redis.call('HGET', dk, vf)
if cur == nextv and redis.call('HGET', dk, df) == doc then
  return stored(B, id, dk, 'ok', df)
end
if cur ~= expect then
  return stored(B, id, dk, 'conflict')
end
redis.call('HSET', dk, vf, nextv, df, doc)
local seen = nil
if ARGV[12] == 'r' then
  redis.call('HSET', dk, 'jv', ARGV[13], 'js', ARGV[14], 'bk', ARGV[15])
  seen = ARGV[16]
end
if ev ~= '' then
  local seq = redis.call('HINCRBY', dk, 'es', 1)
  redis.call('LPUSH', KEYS[2], seq .. ' ' .. ev)
  redis.call('LTRIM', KEYS[2], 0, cap - 1)
end
if attJob ~= '' then
  redis.call('HSET', KEYS[3], attJob, att)
end
reindex(B, id, dk, ARGV[17], seen)
return stored(B, id, dk, 'ok', df)
`)

// markSeenScript raises the marked last-seen time and the seen index entry
// of the bucket's devices named in ARGV, skipping ids that are not stored.
// KEYS: the bucket's seen index. ARGV: bucket prefix, then id, unix ns (20
// digits, so that strings compare as numbers), unix ms for each device.
var markSeenScript = goredis.NewScript(`
local B = ARGV[1]
for i = 2, #ARGV, 3 do
  local id, ns = ARGV[i], ARGV[i + 1]
  local dk = B .. 'dev:' .. id
  local cur = redis.call('HMGET', dk, 'rv', 'ls')
  if cur[1] then
    if not cur[2] or ns > cur[2] then
      redis.call('HSET', dk, 'ls', ns, 'lm', ARGV[i + 2])
    end
    redis.call('ZADD', KEYS[1], 'GT', ARGV[i + 2], id)
  end
end
return 1
`)

// seenMillis is the seen index score of t: unix ms, 0 for never.
func seenMillis(r store.Reported) int64 {
	if r.LastSeen.IsZero() {
		return 0
	}
	return r.LastSeen.UnixMilli()
}

// CreateDevice implements store.Devices: one script writes the device and
// its index entries, so a device is never half created.
func (s *Store) CreateDevice(ctx context.Context, d store.Device) (store.Device, bool, error) {
	d.Desired.Version, d.Reported.Version = 0, 0
	d.Attributes = nil // written with SetAttributes only
	m, dj, rj, err := encode(d)
	if err != nil {
		return store.Device{}, false, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	args := []any{s.deviceBucket(d.ID), d.ID, m, dj, rj, d.Reported.Job.DesiredVersion, d.Reported.Job.Status,
		d.BundleKey(), seenMillis(d.Reported), store.StatusNone}
	for k, v := range d.Labels {
		args = append(args, k+"="+v)
	}
	res, err := s.runOne(ctx, scriptCall{createScript, []string{s.deviceKey(d.ID)}, args})
	if err != nil {
		return store.Device{}, false, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	stored, err := decodeStored(res)
	if err != nil {
		return store.Device{}, false, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	s.notify(ctx, res[5], d.ID)
	return stored, res[0] == "created", nil
}

// SetDesired implements store.Devices.
func (s *Store) SetDesired(ctx context.Context, id string, expect uint64, d store.Desired, w store.Write) (store.Device, error) {
	return s.compareAndSet(ctx, id, "dv", "d", expect, d.Version, d, nil, w)
}

// SetReported implements store.Devices.
func (s *Store) SetReported(ctx context.Context, id string, expect uint64, r store.Reported, w store.Write) (store.Device, error) {
	return s.compareAndSet(ctx, id, "rv", "r", expect, r.Version, r, &r, w)
}

// compareAndSet writes doc (the reported document rep, or a desired one
// when rep is nil) with casScript.
func (s *Store) compareAndSet(ctx context.Context, id, versionField, docField string, expect, next uint64, doc any, rep *store.Reported, w store.Write) (store.Device, error) {
	call, err := s.casCall(id, versionField, docField, expect, next, doc, rep, w)
	if err != nil {
		return store.Device{}, err
	}
	res, err := s.runOne(ctx, call)
	if err != nil {
		return store.Device{}, fmt.Errorf("set device %q: %w", id, err)
	}
	return s.casResult(ctx, id, docField, expect, doc, res)
}

// casCall prepares compareAndSet's script call.
func (s *Store) casCall(id, versionField, docField string, expect, next uint64, doc any, rep *store.Reported, w store.Write) (scriptCall, error) {
	if next != expect+1 {
		return scriptCall{}, fmt.Errorf("set device %q: new version %d must be %d+1", id, next, expect)
	}
	raw, err := encodeDoc(doc)
	if err != nil {
		return scriptCall{}, fmt.Errorf("set device %q: %w", id, err)
	}
	var ev, attJob, att []byte
	if w.Event.Kind != "" {
		w.Event.Seq = 0 // the script numbers events
		if ev, err = encodeDoc(w.Event); err != nil {
			return scriptCall{}, fmt.Errorf("set device %q: %w", id, err)
		}
	}
	if w.Attestation != nil {
		attJob = []byte(w.Attestation.JobID)
		if att, err = encodeDoc(w.Attestation); err != nil {
			return scriptCall{}, fmt.Errorf("set device %q: %w", id, err)
		}
	}
	args := []any{s.deviceBucket(id), id, versionField, docField, strconv.FormatUint(expect, 10),
		strconv.FormatUint(next, 10), raw, ev, store.MaxEvents, attJob, att}
	if rep != nil {
		bundle := store.Device{Reported: *rep}.BundleKey()
		args = append(args, "r", rep.Job.DesiredVersion, rep.Job.Status, bundle, seenMillis(*rep))
	} else {
		args = append(args, "-", "", "", "", "")
	}
	args = append(args, store.StatusNone)
	return scriptCall{casScript, []string{s.deviceKey(id), s.eventsKey(id), s.attKey(id)}, args}, nil
}

// casResult turns casScript's reply into compareAndSet's result, and
// queues the change notice of a write.
func (s *Store) casResult(ctx context.Context, id, docField string, expect uint64, doc any, res []string) (store.Device, error) {
	if len(res) > 0 && res[0] == "missing" {
		return store.Device{}, fmt.Errorf("set device %q: %w", id, store.ErrNotFound)
	}
	if len(res) != 7 {
		return store.Device{}, fmt.Errorf("set device %q: unexpected reply of %d fields", id, len(res))
	}
	if res[0] == "ok" { // the script left out the document written
		res[2], res[3] = orDoc(res[2], docField == "d"), orDoc(res[3], docField == "r")
	}
	dev, err := decodeStored(res)
	if err != nil {
		return store.Device{}, fmt.Errorf("set device %q: %w", id, err)
	}
	if res[0] == "ok" {
		switch v := doc.(type) {
		case store.Desired:
			dev.Desired = v
		case store.Reported:
			seen := dev.Reported.LastSeen // the later of the marked time and the document's
			dev.Reported = v
			if seen.After(v.LastSeen) {
				dev.Reported.LastSeen = seen
			}
		}
	}
	if res[0] == "conflict" {
		cur := dev.Desired.Version
		if docField == "r" {
			cur = dev.Reported.Version
		}
		return dev, fmt.Errorf("set device %q: %w: version is %d, expected %d", id, store.ErrConflict, cur, expect)
	}
	s.notify(ctx, res[5], id)
	return dev, nil
}

// SetDesiredBatch implements store.DesiredBatcher: one casScript per
// device (each in the device's bucket, so it works on a cluster), all sent
// together in pipelines (see autopipe.go), and their notices queued
// together (one message per holding instance, see notices.go).
func (s *Store) SetDesiredBatch(ctx context.Context, writes []store.DesiredWrite) ([]store.DesiredResult, error) {
	calls := make([]scriptCall, len(writes))
	for i, w := range writes {
		c, err := s.casCall(w.ID, "dv", "d", w.Expect, w.Desired.Version, w.Desired, nil, w.Write)
		if err != nil {
			return nil, err
		}
		calls[i] = c
	}
	cmds, err := s.run(ctx, true, calls)
	if err != nil {
		return nil, fmt.Errorf("set desired states: %w", err)
	}
	out := make([]store.DesiredResult, len(writes))
	for i, w := range writes {
		res, err := cmds[i].StringSlice()
		if err != nil {
			return nil, fmt.Errorf("set device %q: %w", w.ID, err)
		}
		out[i].Device, out[i].Err = s.casResult(ctx, w.ID, "d", w.Expect, w.Desired, res)
	}
	return out, nil
}

// MarkSeen implements store.Devices: one script per bucket touched, all in
// one pipeline (on a cluster, one per master), each writing only its
// bucket's keys.
func (s *Store) MarkSeen(ctx context.Context, seen []store.Seen) error {
	perBucket := map[int][]any{}
	for _, m := range seen {
		if m.At.IsZero() || m.At.UnixNano() < 0 {
			continue
		}
		b := bucketOf(m.ID)
		if perBucket[b] == nil {
			perBucket[b] = []any{s.bucketPrefix(b)}
		}
		perBucket[b] = append(perBucket[b], m.ID, fmt.Sprintf("%020d", m.At.UnixNano()), m.At.UnixMilli())
	}
	if len(perBucket) == 0 {
		return nil
	}
	calls := make([]scriptCall, 0, len(perBucket))
	for b, args := range perBucket {
		calls = append(calls, scriptCall{markSeenScript, []string{s.bucketPrefix(b) + "seen"}, args})
	}
	cmds, err := s.run(ctx, false, calls)
	if err != nil {
		return fmt.Errorf("mark seen: %w", err)
	}
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			return fmt.Errorf("mark seen: %w", err)
		}
	}
	return nil
}

// emptyDoc is a stored document with no fields, standing in for the one a
// write script left out of its reply.
const emptyDoc = "\xa0" // a CBOR map of no pairs

func orDoc(field string, skipped bool) string {
	if skipped && field == "" {
		return emptyDoc
	}
	return field
}
