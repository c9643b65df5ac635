package redis

import (
	"context"
	"sync"

	goredis "github.com/redis/go-redis/v9"
)

// Automatic pipelining: the store's single-device reads and write scripts
// from many goroutines (device streams reporting at once, a selector's
// devices) are queued and sent together, one pipeline per round trip, at
// most maxPipelines round trips in flight. A call waits for the round trip
// that carries it, so nothing is delayed while the connection is idle, and
// under load each round trip carries everything that arrived during the
// previous one: the cost of the socket calls on both sides is shared by the
// batch. On a cluster go-redis splits each pipeline per master.
const (
	maxPipelines = 4    // round trips in flight at once
	maxBatch     = 1024 // commands per pipeline
)

// pipeReq is one command in the queue: a script call or a plain command.
type pipeReq struct {
	call *scriptCall
	args []any
	cmd  *goredis.Cmd
	done chan struct{}
}

// autoPipe is the queue. The zero value is ready to use.
type autoPipe struct {
	mu      sync.Mutex
	queue   []*pipeReq
	running int
}

// do sends reqs through the queue and waits until all have their replies
// or ctx ends (then the commands may still run, as after a lost reply:
// every write is safe to repeat).
func (s *Store) do(ctx context.Context, reqs ...*pipeReq) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	a := &s.pipe
	a.mu.Lock()
	for _, r := range reqs {
		r.done = make(chan struct{})
		a.queue = append(a.queue, r)
	}
	start := a.running < maxPipelines
	if start {
		a.running++
	}
	a.mu.Unlock()
	if start {
		go s.pipeLoop()
	}
	for _, r := range reqs {
		select {
		case <-r.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// pipeLoop sends queued batches until the queue is empty.
func (s *Store) pipeLoop() {
	a := &s.pipe
	for {
		a.mu.Lock()
		n := min(len(a.queue), maxBatch)
		if n == 0 {
			a.running--
			a.mu.Unlock()
			return
		}
		batch := a.queue[:n:n]
		a.queue = a.queue[n:]
		if len(a.queue) == 0 {
			a.queue = nil
		}
		a.mu.Unlock()
		s.sendBatch(batch)
	}
}

// sendBatch sends one pipeline; scripts the server did not have loaded
// (NOSCRIPT) are sent again with EVAL in a second one.
func (s *Store) sendBatch(batch []*pipeReq) {
	ctx := context.Background()
	_, _ = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for _, r := range batch {
			if r.call != nil {
				r.cmd = r.call.script.EvalSha(ctx, p, r.call.keys, r.call.args...)
			} else {
				r.cmd = p.Do(ctx, r.args...)
			}
		}
		return nil
	})
	var again []*pipeReq
	for _, r := range batch {
		if r.call != nil && goredis.HasErrorPrefix(r.cmd.Err(), "NOSCRIPT") {
			again = append(again, r)
		} else {
			close(r.done)
		}
	}
	if len(again) == 0 {
		return
	}
	_, _ = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for _, r := range again {
			r.cmd = r.call.script.Eval(ctx, p, r.call.keys, r.call.args...)
		}
		return nil
	})
	for _, r := range again {
		close(r.done)
	}
}
