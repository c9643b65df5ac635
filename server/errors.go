package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/rollout"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/tuf"
)

// This file is the one place where domain errors become status codes, with
// messages that are safe to send to the caller. Everything unexpected is
// logged in full and leaves as Internal without details.
//
// A store outage (store.ErrUnavailable) leaves as Unavailable with a retry
// hint: a google.rpc.RetryInfo error detail on gRPC and Connect, and a
// Retry-After header on Connect's unary calls and on plain HTTP.

var errPermissionDenied = errors.New("permission denied")

// StoreRetryDelay is the retry hint sent with an Unavailable caused by a
// store outage: about how often readiness checks the store again.
const StoreRetryDelay = 2 * time.Second

// msgStoreUnavailable is what a caller is told about a store outage.
const msgStoreUnavailable = "the store is unavailable; retry later"

// classify maps an error to a status code and a client-safe message.
func classify(err error) (connect.Code, string) {
	var invalid *replica.InvalidError
	var ce *connect.Error
	var repoErr *tuf.Error
	var noDevice *store.DeviceNotFoundError
	switch {
	case errors.As(err, &ce):
		return ce.Code(), ce.Message()
	case errors.Is(err, store.ErrUnavailable):
		return connect.CodeUnavailable, msgStoreUnavailable
	case errors.As(err, &invalid):
		return connect.CodeInvalidArgument, invalid.Error()
	case errors.As(err, &repoErr):
		return map[tuf.Kind]connect.Code{
			tuf.KindInvalid:            connect.CodeInvalidArgument,
			tuf.KindFailedPrecondition: connect.CodeFailedPrecondition,
			tuf.KindNotFound:           connect.CodeNotFound,
		}[repoErr.Kind], repoErr.Msg
	case errors.Is(err, credentials.ErrInvalid):
		return connect.CodeInvalidArgument, err.Error()
	case errors.Is(err, credentials.ErrForbidden):
		return connect.CodePermissionDenied, err.Error()
	case errors.Is(err, credentials.ErrNoIssuer):
		return connect.CodeFailedPrecondition, err.Error()
	case errors.Is(err, credentials.ErrEnrolled):
		return connect.CodeFailedPrecondition, err.Error() + " (AddDevice with reenroll: ferryctl device add <id> --reenroll)"
	case errors.Is(err, rollout.ErrNotFound):
		return connect.CodeNotFound, "rollout not found"
	case errors.Is(err, rollout.ErrState):
		return connect.CodeFailedPrecondition, err.Error()
	case errors.As(err, &noDevice):
		return connect.CodeNotFound, noDevice.Error()
	case errors.Is(err, store.ErrNotFound):
		return connect.CodeNotFound, "device not found"
	case errors.Is(err, store.ErrNoAttestation):
		return connect.CodeNotFound, "no signed report is recorded for that job"
	case errors.Is(err, store.ErrBadPageToken):
		return connect.CodeInvalidArgument, "page_token: not a token from a previous page"
	case errors.Is(err, store.ErrConflict):
		return connect.CodeAborted, "the document changed concurrently; read it again and retry"
	case errors.Is(err, credentials.ErrEnrollmentToken):
		return connect.CodeUnauthenticated, "the enrollment token is unknown, used, expired or replaced by a newer one; " +
			"an admin issues a new one with ferryctl device add <id> (--reenroll for a device that has enrolled)"
	case errors.Is(err, credentials.ErrUnauthenticated):
		return connect.CodeUnauthenticated, "a valid credential is required"
	case errors.Is(err, errPermissionDenied):
		return connect.CodePermissionDenied, err.Error()
	case errors.Is(err, context.Canceled):
		return connect.CodeCanceled, "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return connect.CodeDeadlineExceeded, "deadline exceeded"
	}
	return connect.CodeInternal, "internal error"
}

// connectError turns err into a Connect error for the back-office API.
func connectError(ctx context.Context, log *slog.Logger, err error) error {
	code, msg := classify(err)
	logClassified(ctx, log, code, err)
	ce := connect.NewError(code, errors.New(msg))
	if delay, ok := retryAfter(err); ok {
		if detail, derr := connect.NewErrorDetail(retryInfo(delay)); derr == nil {
			ce.AddDetail(detail)
		}
		ce.Meta().Set("Retry-After", retryAfterSeconds(delay))
	}
	return ce
}

// grpcError turns err into a gRPC status error for the device port. gRPC and
// Connect codes have the same numbers.
func grpcError(ctx context.Context, log *slog.Logger, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	code, msg := classify(err)
	logClassified(ctx, log, code, err)
	st := status.New(codes.Code(code), msg)
	if delay, ok := retryAfter(err); ok {
		if withHint, derr := st.WithDetails(retryInfo(delay)); derr == nil {
			st = withHint
		}
	}
	return st.Err()
}

// logClassified logs what the caller is not told: everything of an
// Internal error, and the cause of a store outage (once per failed call,
// at warning level: the outage is the operator's to see, not a bug).
func logClassified(ctx context.Context, log *slog.Logger, code connect.Code, err error) {
	switch {
	case code == connect.CodeInternal:
		log.ErrorContext(ctx, "internal error", "err", err)
	case errors.Is(err, store.ErrUnavailable):
		log.WarnContext(ctx, "store unavailable", "err", err)
	}
}

// retryAfter returns the retry hint for err, if it has one.
func retryAfter(err error) (time.Duration, bool) {
	if errors.Is(err, store.ErrUnavailable) {
		return StoreRetryDelay, true
	}
	return 0, false
}

func retryInfo(delay time.Duration) *errdetails.RetryInfo {
	return &errdetails.RetryInfo{RetryDelay: durationpb.New(delay)}
}

// retryAfterSeconds formats delay for a Retry-After header (whole seconds,
// at least 1).
func retryAfterSeconds(delay time.Duration) string {
	return strconv.Itoa(max(1, int((delay+time.Second-1)/time.Second)))
}

// httpUnavailable answers a plain HTTP request (a TUF download) that
// failed for a store outage: 503 with Retry-After. err is the store's error
// or the Unavailable that connectError made of it. It reports whether it
// answered.
func httpUnavailable(w http.ResponseWriter, err error) bool {
	if !errors.Is(err, store.ErrUnavailable) && connect.CodeOf(err) != connect.CodeUnavailable {
		return false
	}
	w.Header().Set("Retry-After", retryAfterSeconds(StoreRetryDelay))
	http.Error(w, msgStoreUnavailable, http.StatusServiceUnavailable)
	return true
}
