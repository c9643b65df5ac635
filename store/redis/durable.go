package redis

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// SetMinReplicas makes every acknowledged write of a device or a rollout
// (CreateDevice, SetDesired, SetReported, CreateRollout, UpdateRollout,
// PutExecutions) wait until n replicas of the master that took it have
// acknowledged it too (Redis WAIT, on the connection that wrote), for at
// most timeout (a non-positive timeout means one second). A write that
// fewer replicas acknowledged in time fails with an error wrapping
// store.ErrUnavailable; it may have landed on the master, and repeating it
// is safe (every write is idempotent). n = 0, the default, does not wait.
// Heartbeats (MarkSeen) and leases never wait. Call it before the store is
// used.
func (s *Store) SetMinReplicas(n int, timeout time.Duration) {
	if timeout <= 0 {
		timeout = time.Second
	}
	s.minReplicas, s.waitTimeout = max(n, 0), timeout
}

// scriptCall is one script to run with its keys (keys[0] decides where it
// runs) and arguments.
type scriptCall struct {
	script *goredis.Script
	keys   []string
	args   []any
}

// runOne runs one durable write script and returns its reply as strings.
func (s *Store) runOne(ctx context.Context, call scriptCall) ([]string, error) {
	cmds, err := s.run(ctx, true, []scriptCall{call})
	if err != nil {
		return nil, err
	}
	return cmds[0].StringSlice()
}

// run runs calls in one pipeline per connection (EVALSHA, then EVAL for a
// script the server did not have loaded) and returns their commands, whose
// own errors the caller checks. With durable and SetMinReplicas, each
// connection's pipeline ends with WAIT: on a cluster the calls are grouped
// by the master of their first key and sent on that master's own
// connection (a keyless WAIT in a cluster pipeline would go to any node).
// The error is that of a connection, or a WAIT that fell short.
func (s *Store) run(ctx context.Context, durable bool, calls []scriptCall) ([]*goredis.Cmd, error) {
	cmds := make([]*goredis.Cmd, len(calls))
	wait := durable && s.minReplicas > 0
	all := make([]int, len(calls))
	for i := range calls {
		all[i] = i
	}
	if !wait {
		reqs := make([]*pipeReq, len(calls))
		for i := range calls {
			reqs[i] = &pipeReq{call: &calls[i]}
		}
		if err := s.do(ctx, reqs...); err != nil {
			return nil, err
		}
		for i, r := range reqs {
			cmds[i] = r.cmd
			if err := r.cmd.Err(); err != nil && isConnError(err) && !errors.Is(err, goredis.Nil) {
				return nil, err
			}
		}
		return cmds, nil
	}
	cc, ok := s.rdb.(*goredis.ClusterClient)
	if !ok {
		return cmds, s.runOn(ctx, s.rdb, calls, all, cmds, true)
	}
	groups := map[*goredis.Client][]int{}
	for i, c := range calls {
		node, err := cc.MasterForKey(ctx, c.keys[0])
		if err != nil {
			return nil, fmt.Errorf("%w: %w", store.ErrUnavailable, err)
		}
		groups[node] = append(groups[node], i)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for node, idx := range groups {
		wg.Go(func() {
			// The node's own client has no unavailable hook: mark here.
			if err := markUnavailable(ctx, s.runOn(ctx, node, calls, idx, cmds, true)); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return cmds, errors.Join(errs...)
}

// runOn runs the calls idx on conn, see run.
func (s *Store) runOn(ctx context.Context, conn goredis.UniversalClient, calls []scriptCall, idx []int, cmds []*goredis.Cmd, wait bool) error {
	pending := idx
	for attempt := 0; len(pending) > 0; attempt++ {
		var waited *goredis.IntCmd
		_, err := conn.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for _, i := range pending {
				c := calls[i]
				if attempt == 0 {
					cmds[i] = c.script.EvalSha(ctx, p, c.keys, c.args...)
				} else {
					cmds[i] = c.script.Eval(ctx, p, c.keys, c.args...)
				}
			}
			if wait {
				waited = waitCmd(ctx, p, s.minReplicas, s.waitTimeout)
			}
			return nil
		})
		var again []int
		for _, i := range pending {
			if attempt == 0 && goredis.HasErrorPrefix(cmds[i].Err(), "NOSCRIPT") {
				again = append(again, i)
			}
		}
		if wait {
			if err := waited.Err(); err != nil {
				return err
			}
			if n := waited.Val(); n < int64(s.minReplicas) && len(again) < len(pending) {
				return fmt.Errorf("%w: %d of %d replicas acknowledged the write within %v",
					store.ErrUnavailable, n, s.minReplicas, s.waitTimeout)
			}
		}
		if err != nil && len(again) == 0 && isConnError(err) {
			return err
		}
		pending = again
	}
	return nil
}

// isConnError tells a pipeline's failure to reach the server from a
// command's own error (a Redis error reply), which stays with its command.
func isConnError(err error) bool {
	var rerr goredis.Error
	return !errors.As(err, &rerr)
}

// waitCmd queues WAIT n timeout on p. go-redis's pipeline has Wait (which
// also lengthens the read deadline to the timeout) though its Pipeliner
// interface does not name it.
func waitCmd(ctx context.Context, p goredis.Pipeliner, n int, timeout time.Duration) *goredis.IntCmd {
	if w, ok := p.(interface {
		Wait(context.Context, int, time.Duration) *goredis.IntCmd
	}); ok {
		return w.Wait(ctx, n, timeout)
	}
	cmd := goredis.NewIntCmd(ctx, "wait", n, timeout.Milliseconds())
	_ = p.Process(ctx, cmd)
	return cmd
}
