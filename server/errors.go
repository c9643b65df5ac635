package server

import (
	"context"
	"errors"
	"log/slog"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/rollout"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/tuf"
)

// This file is the one place where domain errors become status codes, with
// messages that are safe to send to the caller. Everything unexpected is
// logged in full and leaves as Internal without details.

var errPermissionDenied = errors.New("permission denied")

// classify maps an error to a status code and a client-safe message.
func classify(err error) (connect.Code, string) {
	var invalid *replica.InvalidError
	var ce *connect.Error
	var repoErr *tuf.Error
	var noDevice *store.DeviceNotFoundError
	switch {
	case errors.As(err, &ce):
		return ce.Code(), ce.Message()
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
	if code == connect.CodeInternal {
		log.ErrorContext(ctx, "internal error", "err", err)
	}
	return connect.NewError(code, errors.New(msg))
}

// grpcError turns err into a gRPC status error for the device port. gRPC and
// Connect codes have the same numbers.
func grpcError(ctx context.Context, log *slog.Logger, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	code, msg := classify(err)
	if code == connect.CodeInternal {
		log.ErrorContext(ctx, "internal error", "err", err)
	}
	return status.Error(codes.Code(code), msg)
}
