package redis

import (
	"context"
	"encoding/json"
	"fmt"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// setAttributesScript replaces a device's attributes (field at, JSON) and
// moves its entries in the bucket's attribute indexes (a:<key>=<value>),
// unless they are the same already. It returns the outcome ("ok", "same"
// or "missing"), the stored fields and the device's holder.
// KEYS: device hash. ARGV: bucket prefix, id, the attributes' JSON ("" for
// none), then "<key>=<value>" of each attribute.
var setAttributesScript = goredis.NewScript(reindexLua + `
local dk, B, id, doc = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', dk) == 0 then
  return {'missing'}
end
local old = redis.call('HGET', dk, 'at')
if (old or '') == doc then
  return stored(B, id, dk, 'same')
end
if old then
  for k, v in pairs(cjson.decode(old)) do
    redis.call('ZREM', B .. 'a:' .. k .. '=' .. v, id)
  end
end
for i = 4, #ARGV do
  redis.call('ZADD', B .. 'a:' .. ARGV[i], 0, id)
end
if doc == '' then
  redis.call('HDEL', dk, 'at')
else
  redis.call('HSET', dk, 'at', doc)
end
return stored(B, id, dk, 'ok')
`)

// SetAttributes implements store.Devices: one script compares, writes the
// attributes and moves their index entries.
func (s *Store) SetAttributes(ctx context.Context, id string, attrs map[string]string) (store.Device, bool, error) {
	var doc []byte
	args := []any{s.deviceBucket(id), id}
	if len(attrs) > 0 {
		var err error
		if doc, err = json.Marshal(attrs); err != nil { // keys in order: equal maps, equal bytes
			return store.Device{}, false, fmt.Errorf("set attributes of %q: %w", id, err)
		}
	}
	args = append(args, doc)
	for k, v := range attrs {
		args = append(args, k+"="+v)
	}
	res, err := s.runOne(ctx, scriptCall{setAttributesScript, []string{s.deviceKey(id)}, args})
	if err != nil {
		return store.Device{}, false, fmt.Errorf("set attributes of %q: %w", id, err)
	}
	if res[0] == "missing" {
		return store.Device{}, false, fmt.Errorf("set attributes of %q: %w", id, store.ErrNotFound)
	}
	dev, err := decodeStored(res)
	if err != nil {
		return store.Device{}, false, fmt.Errorf("set attributes of %q: %w", id, err)
	}
	if res[0] != "ok" {
		return dev, false, nil
	}
	s.notify(ctx, res[5], id)
	return dev, true, nil
}
