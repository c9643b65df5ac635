package redis

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// unavailableHook is a go-redis hook that marks the errors which mean
// "Redis cannot serve right now" as store.ErrUnavailable, so that callers
// (and the server's status mapping) can tell an outage from a bug:
//
//   - transport failures: connection refused or reset, a closed or broken
//     connection (EOF), read and write timeouts, a pool with no free
//     connection within its timeout, a closed client;
//   - Redis replies that say the server cannot serve for now: LOADING,
//     MASTERDOWN, CLUSTERDOWN, TRYAGAIN, READONLY (a primary that became a
//     replica in a failover), NOREPLICAS, and the max-clients refusal.
//
// goredis.Nil, script errors, WRONGTYPE, authentication and every other
// reply are left as they are, and an error is never re-marked when the
// caller's own context ended (that is the caller's cancellation or
// deadline, not an outage).
//
// The hook sits above go-redis's own retries (they run inside next), and
// the marked error keeps the original in its chain: errors.As still finds
// a goredis.Error, so Script.Run's NOSCRIPT fallback and the cluster
// client's redirections, which look at unmarked errors anyway, behave as
// before. Client.Process stores the hook's result as the command's error.
type unavailableHook struct{}

var _ goredis.Hook = unavailableHook{}

// DialHook leaves dialing alone: the pool and the retries see dial errors
// as go-redis made them, and the command that needed the connection is
// marked.
func (unavailableHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (unavailableHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		err := markUnavailable(ctx, next(ctx, cmd))
		if err != nil {
			cmd.SetErr(err)
		}
		return err
	}
}

func (unavailableHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		err := markUnavailable(ctx, next(ctx, cmds))
		for _, cmd := range cmds {
			if cerr := cmd.Err(); cerr != nil {
				if m := markUnavailable(ctx, cerr); m != cerr {
					cmd.SetErr(m)
				}
			}
		}
		return err
	}
}

// unavailableError is a go-redis error marked as store.ErrUnavailable.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string   { return "store unavailable: " + e.err.Error() }
func (e *unavailableError) Unwrap() []error { return []error{store.ErrUnavailable, e.err} }

// markUnavailable returns err marked as store.ErrUnavailable when it means
// that Redis cannot serve for now, and err unchanged otherwise.
func markUnavailable(ctx context.Context, err error) error {
	if err == nil || errors.Is(err, store.ErrUnavailable) || ctx.Err() != nil || !isUnavailable(err) {
		return err
	}
	return &unavailableError{err}
}

// isUnavailable reports whether err is a transport failure or a Redis
// reply that says the server cannot serve for now.
func isUnavailable(err error) bool {
	if errors.Is(err, goredis.Nil) || errors.Is(err, goredis.TxFailedErr) {
		return false
	}
	var opErr *net.OpError
	var netErr net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed), errors.Is(err, goredis.ErrClosed),
		errors.Is(err, goredis.ErrPoolTimeout), errors.Is(err, goredis.ErrPoolExhausted),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return true
	case errors.As(err, &opErr): // dial, read or write on the socket
		return true
	case errors.As(err, &netErr) && netErr.Timeout():
		return true
	}
	return goredis.IsLoadingError(err) || goredis.IsMasterDownError(err) ||
		goredis.IsClusterDownError(err) || goredis.IsTryAgainError(err) ||
		goredis.IsReadOnlyError(err) || goredis.IsNoReplicasError(err) ||
		goredis.IsMaxClientsError(err)
}
