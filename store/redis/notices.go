package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// Directed change notices (store.Changes), on Redis 7's sharded pub/sub:
//
//	<prefix>{b042}:holders          hash in each device bucket: device id ->
//	                                name of the instance holding its stream
//	<prefix>notices:to:<instance>   shard channel of one instance: the ids
//	                                of the changed devices it holds, one
//	                                per line, many in a message
//	<prefix>notices:all             shard channel of fleet-wide watchers
//	<prefix>watchers                sorted set: instance -> until when (ms,
//	                                Redis's clock) it watches the fleet
//
// A device write reads the device's holder in its bucket and publishes the
// id to that instance's channel only (SPUBLISH: on a cluster, the channel
// lives on the master of its slot, so the instances' channels spread over
// the masters and a notice is one hop). Nothing is published for a device
// no instance holds.
//
// Fleet-wide watchers (WatchDevices, the leading rollout controller) need
// every change. An instance with a watch open registers in the watchers set
// and subscribes to the "all" channel; writers publish there too, but only
// while the set says someone watches, which each instance reads at most once
// per WatchRefresh (one read-only script). So instances pay for global
// notices only while a watcher exists; a watch opened on one instance sees
// the changes written through the other instances at most WatchRefresh
// after it opened.
//
// A killed instance leaves its holder entries behind: notices to it are
// lost (nobody listens) until the device reconnects to an instance that
// holds it anew and overwrites the entry, which reads the device then. Its watcher entry expires after watchTTL.

// Defaults of the notice machinery.
const (
	// DefaultWatchRefresh is how often, at most, a writer reads whether
	// any instance watches the whole fleet.
	DefaultWatchRefresh = time.Second
	// watchRenew and watchTTL: a watching instance renews its entry in the
	// watchers set every watchRenew; it expires watchTTL after the last
	// renewal.
	watchRenew = 3 * time.Second
	watchTTL   = 10 * time.Second
)

// notices is the state of a Store's change notices. The zero value is
// ready to use.
type notices struct {
	nameOnce sync.Once
	name     string
	refresh  time.Duration

	mu   sync.Mutex
	subs map[*func(string)]struct{} // SubscribeChanges callers

	// queue holds notices of the store's own writes, sent by one flusher
	// at a time in a pipeline; a burst of writes (a selector, a rollout
	// wave) turns into a few pipelines.
	qmu      sync.Mutex
	queue    map[string]holder
	flushing bool

	// flag caches whether any instance watches the fleet.
	flagMu sync.Mutex
	flagAt time.Time
	flagOn bool

	// watch is this instance's fleet-wide watch, open while watchers > 0.
	watchMu   sync.Mutex
	watchers  int
	stopWatch context.CancelFunc
	watchDone chan struct{}
}

// holder is a queued notice's destination: the instance holding the
// device, or unknown (looked up when the queue is sent).
type holder struct {
	name  string
	known bool
}

// SetInstance names this instance (the default is host/pid/random). Give
// two Store values the same name only if they are one instance. Call it
// before the store is used.
func (s *Store) SetInstance(name string) {
	s.n.nameOnce.Do(func() {})
	s.n.name = name
}

// Instance returns the name this instance holds devices under.
func (s *Store) Instance() string {
	s.n.nameOnce.Do(func() {
		if s.n.name == "" {
			host, _ := os.Hostname()
			b := make([]byte, 4)
			rand.Read(b)
			s.n.name = fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b))
		}
	})
	return s.n.name
}

// SetWatchRefresh sets how often, at most, writes read whether an instance
// watches the whole fleet (DefaultWatchRefresh). Call it before the store
// is used.
func (s *Store) SetWatchRefresh(d time.Duration) { s.n.refresh = d }

func (s *Store) noticeChannel(instance string) string { return s.prefix + "notices:to:" + instance }
func (s *Store) watchChannel() string                 { return s.prefix + "notices:all" }
func (s *Store) watchersKey() string                  { return s.prefix + "watchers" }

// holdReleaseScript removes a holder entry only if it still names this
// instance. KEYS: holders hash. ARGV: device id, instance.
var holdReleaseScript = goredis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
`)

// Hold implements store.Changes: the device's holder entry names this
// instance from now on, whoever held it before.
func (s *Store) Hold(ctx context.Context, id string) error {
	if err := s.rdb.HSet(ctx, s.holdersKey(id), id, s.Instance()).Err(); err != nil {
		return fmt.Errorf("hold device %q: %w", id, err)
	}
	return nil
}

// Release implements store.Changes.
func (s *Store) Release(ctx context.Context, id string) error {
	if err := holdReleaseScript.Run(ctx, s.rdb, []string{s.holdersKey(id)}, id, s.Instance()).Err(); err != nil {
		return fmt.Errorf("release device %q: %w", id, err)
	}
	return nil
}

// notify announces that device id changed to its holder (the name a
// device-write script read in the device's bucket; "" when no instance
// holds it) and to the fleet's watchers. It queues the notice and returns:
// notices are sent in the background, pipelined.
func (s *Store) notify(_ context.Context, holderName, id string) {
	s.enqueue(id, holder{name: holderName, known: true})
}

// announce is notify for a write that did not read the device's holder:
// the holder is looked up when the notice is sent.
func (s *Store) announce(_ context.Context, id string) {
	s.enqueue(id, holder{})
}

func (s *Store) enqueue(id string, h holder) {
	n := &s.n
	n.qmu.Lock()
	if n.queue == nil {
		n.queue = make(map[string]holder)
	}
	if prev, ok := n.queue[id]; !ok || !prev.known {
		n.queue[id] = h
	}
	start := !n.flushing
	n.flushing = true
	n.qmu.Unlock()
	if start {
		go s.flushNotices()
	}
}

// flushNotices sends the queued notices until the queue is empty. A batch
// that fails is tried twice more, then dropped with a warning: delivery is
// best effort (see store.Changes for what covers a lost notice).
func (s *Store) flushNotices() {
	n := &s.n
	for {
		n.qmu.Lock()
		batch := n.queue
		n.queue = nil
		if len(batch) == 0 {
			n.flushing = false
			n.qmu.Unlock()
			return
		}
		n.qmu.Unlock()
		var err error
		for attempt := range 3 {
			if attempt > 0 {
				time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err = s.send(ctx, batch)
			cancel()
			if err == nil {
				break
			}
		}
		if err != nil {
			s.logger().Warn("change notices dropped", "devices", len(batch), "err", err)
		}
	}
}

// send publishes one batch of notices: the unknown holders are read in one
// pipeline, the notices sent in another.
func (s *Store) send(ctx context.Context, batch map[string]holder) error {
	var unknown []string
	for id, h := range batch {
		if !h.known {
			unknown = append(unknown, id)
		}
	}
	if len(unknown) > 0 {
		cmds := make([]*goredis.StringCmd, len(unknown))
		_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for i, id := range unknown {
				cmds[i] = p.HGet(ctx, s.holdersKey(id), id)
			}
			return nil
		})
		if err != nil && !errors.Is(err, goredis.Nil) {
			return fmt.Errorf("read holders: %w", err)
		}
		for i, id := range unknown {
			batch[id] = holder{name: cmds[i].Val(), known: true}
		}
	}
	watched := s.watched(ctx)
	perHolder := map[string][]string{}
	var all []string
	for id, h := range batch {
		if h.name != "" {
			perHolder[h.name] = append(perHolder[h.name], id)
		}
		if watched {
			all = append(all, id)
		}
	}
	_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for name, ids := range perHolder {
			for _, msg := range noticeMessages(ids) {
				p.SPublish(ctx, s.noticeChannel(name), msg)
			}
		}
		for _, msg := range noticeMessages(all) {
			p.SPublish(ctx, s.watchChannel(), msg)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("publish notices: %w", err)
	}
	return nil
}

// maxNoticeIDs is how many device ids one notice message carries at most.
const maxNoticeIDs = 1000

// noticeMessages joins ids into notice messages, one id per line (device
// ids hold no line breaks), at most maxNoticeIDs a message: a write to
// many devices costs one message per instance holding some of them, not
// one per device.
func noticeMessages(ids []string) []string {
	var out []string
	for len(ids) > 0 {
		n := min(len(ids), maxNoticeIDs)
		out = append(out, strings.Join(ids[:n], "\n"))
		ids = ids[n:]
	}
	return out
}

// PublishChange implements store.Changes: the holders of the devices are
// read in one pipeline, the notices sent in another.
func (s *Store) PublishChange(ctx context.Context, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	batch := make(map[string]holder, len(ids))
	for _, id := range ids {
		batch[id] = holder{}
	}
	return s.send(ctx, batch)
}

// watchedScript counts the instances that watch the fleet now (Redis's
// clock). It only reads. KEYS: watchers set.
var watchedScript = goredis.NewScript(`
local t = redis.call('TIME')
return redis.call('ZCOUNT', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), '+inf')
`)

// watchScript registers (ARGV[2] = 1) or removes (0) instance ARGV[1] in
// the watchers set, and drops expired entries. ARGV[3]: ttl (ms).
var watchScript = goredis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[2] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
`)

// watched reports whether any instance watches the whole fleet, from a
// flag read at most every WatchRefresh. While this instance watches, it is
// true without asking. A failed read counts as watched.
func (s *Store) watched(ctx context.Context) bool {
	n := &s.n
	n.watchMu.Lock()
	local := n.watchers > 0
	n.watchMu.Unlock()
	if local {
		return true
	}
	every := n.refresh
	if every <= 0 {
		every = DefaultWatchRefresh
	}
	n.flagMu.Lock()
	defer n.flagMu.Unlock()
	if now := time.Now(); now.Sub(n.flagAt) >= every {
		c, err := watchedScript.Run(ctx, s.rdb, []string{s.watchersKey()}).Int64()
		n.flagOn, n.flagAt = err != nil || c > 0, now
	}
	return n.flagOn
}

// WatchAll implements store.Changes. The first watch of an instance
// registers it in the watchers set and subscribes to the watchers'
// channel; both are in place when it returns. Writes through other
// instances reach it at most WatchRefresh later.
func (s *Store) WatchAll(ctx context.Context) (func(), error) {
	n := &s.n
	n.watchMu.Lock()
	defer n.watchMu.Unlock()
	if n.watchers == 0 {
		if err := s.startWatch(ctx); err != nil {
			return nil, err
		}
	}
	n.watchers++
	var once sync.Once
	return func() { once.Do(s.endWatch) }, nil
}

// startWatch registers the instance as a watcher and subscribes to the
// watchers' channel, delivering to every SubscribeChanges caller. Called
// with watchMu held.
func (s *Store) startWatch(ctx context.Context) error {
	n := &s.n
	sub := s.rdb.SSubscribe(ctx, s.watchChannel())
	if _, err := sub.Receive(ctx); err != nil {
		sub.Close()
		return fmt.Errorf("watch the fleet: %w", err)
	}
	if err := s.register(ctx, true); err != nil {
		sub.Close()
		return fmt.Errorf("watch the fleet: %w", err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	n.stopWatch, n.watchDone = cancel, done
	go func() {
		defer close(done)
		defer sub.Close()
		renew := time.NewTicker(watchRenew)
		defer renew.Stop()
		ch := sub.Channel()
		for {
			select {
			case <-wctx.Done():
				return
			case <-renew.C:
				rctx, cancel := context.WithTimeout(wctx, watchRenew)
				s.register(rctx, true) // a failure is retried on the next tick
				cancel()
			case m, ok := <-ch:
				if !ok {
					return
				}
				for _, id := range strings.Split(m.Payload, "\n") {
					s.deliver(id)
				}
			}
		}
	}()
	return nil
}

// endWatch ends one WatchAll; the last one unsubscribes and leaves the
// watchers set.
func (s *Store) endWatch() {
	n := &s.n
	n.watchMu.Lock()
	defer n.watchMu.Unlock()
	if n.watchers--; n.watchers > 0 {
		return
	}
	n.stopWatch()
	<-n.watchDone
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.register(ctx, false) // if this fails, the entry expires by itself
}

func (s *Store) register(ctx context.Context, on bool) error {
	flag := "0"
	if on {
		flag = "1"
	}
	return watchScript.Run(ctx, s.rdb, []string{s.watchersKey()}, s.Instance(), flag, watchTTL.Milliseconds()).Err()
}

// deliver calls every SubscribeChanges caller with id.
func (s *Store) deliver(id string) {
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	for fn := range s.n.subs {
		(*fn)(id)
	}
}

// SubscribeChanges implements store.Changes: it subscribes to this
// instance's shard channel (and receives the watchers' channel while a
// WatchAll is open). go-redis reconnects a broken subscription by itself
// (and pings an idle one to find out); notices published meanwhile are
// lost, so each time the subscription is made again fn is told that every
// device may have changed (store.AllChanged), as it is once the first one
// is in place.
func (s *Store) SubscribeChanges(ctx context.Context, fn func(id string)) error {
	sub := s.rdb.SSubscribe(ctx, s.noticeChannel(s.Instance()))
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // wait for the subscription
		return fmt.Errorf("subscribe to changes: %w", err)
	}
	n := &s.n
	n.mu.Lock()
	if n.subs == nil {
		n.subs = make(map[*func(string)]struct{})
	}
	n.subs[&fn] = struct{}{}
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.subs, &fn)
		n.mu.Unlock()
	}()
	fn(store.AllChanged)
	ch := sub.ChannelWithSubscriptions()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-ch:
			if !ok {
				return nil
			}
			switch m := m.(type) {
			case *goredis.Subscription:
				if m.Kind == "ssubscribe" { // made again after a break
					fn(store.AllChanged)
				}
			case *goredis.Message:
				for _, id := range strings.Split(m.Payload, "\n") {
					fn(id)
				}
			}
		}
	}
}
