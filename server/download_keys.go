package server

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferryhq/ferry/credentials"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	"github.com/ferryhq/ferry/proto/ferry/credentials/v1/credentialsv1connect"
)

// maxDownloadKeyGrace bounds the grace a rotation may give the key it
// replaces: tokens live an hour at most, so a longer grace only keeps an
// old key alive.
const maxDownloadKeyGrace = 7 * 24 * time.Hour

// downloadKeyService serves DownloadKeyService on the back-office port,
// behind the operator interceptor (list: viewer, rotate: admin).
type downloadKeyService struct {
	credentialsv1connect.UnimplementedDownloadKeyServiceHandler
	creds *credentialsState
}

var _ credentialsv1connect.DownloadKeyServiceHandler = (*downloadKeyService)(nil)

func (s *downloadKeyService) ListDownloadKeys(ctx context.Context, _ *connect.Request[credentialsv1.ListDownloadKeysRequest]) (*connect.Response[credentialsv1.ListDownloadKeysResponse], error) {
	ks, err := s.creds.keys.Reload(ctx)
	if err != nil {
		return nil, connectError(ctx, s.creds.log, err)
	}
	cur, prev := keysetToProto(ks)
	return connect.NewResponse(&credentialsv1.ListDownloadKeysResponse{Current: cur, Previous: prev}), nil
}

func (s *downloadKeyService) RotateDownloadKey(ctx context.Context, req *connect.Request[credentialsv1.RotateDownloadKeyRequest]) (*connect.Response[credentialsv1.RotateDownloadKeyResponse], error) {
	grace := s.creds.cfg.Credentials.DownloadKeyGrace
	if g := req.Msg.GetGrace(); g != nil {
		if err := g.CheckValid(); err != nil || g.AsDuration() < 0 || g.AsDuration() > maxDownloadKeyGrace {
			return nil, connect.NewError(connect.CodeInvalidArgument,
				errors.New("grace: want a duration from 0 (retire the old key at once) to 168h"))
		}
		grace = g.AsDuration()
	}
	ks, err := s.creds.keys.Rotate(ctx, grace)
	if err != nil {
		return nil, connectError(ctx, s.creds.log, err)
	}
	s.creds.log.InfoContext(ctx, "download token key rotated through the API", "by", operatorFromContext(ctx).Name,
		"current", ks.Current.ID, "grace", grace)
	cur, prev := keysetToProto(ks)
	return connect.NewResponse(&credentialsv1.RotateDownloadKeyResponse{Current: cur, Previous: prev}), nil
}

// keysetToProto describes a keyset without its secrets, previous keys
// newest first.
func keysetToProto(ks credentials.DownloadKeyset) (*credentialsv1.DownloadKey, []*credentialsv1.DownloadKey) {
	one := func(k credentials.DownloadKey) *credentialsv1.DownloadKey {
		out := &credentialsv1.DownloadKey{Id: k.ID, CreateTime: timestamppb.New(k.CreatedAt), Legacy: k.Legacy}
		if !k.RetireAt.IsZero() {
			out.RetireTime = timestamppb.New(k.RetireAt)
		}
		return out
	}
	prev := make([]*credentialsv1.DownloadKey, len(ks.Previous))
	for i, k := range ks.Previous {
		prev[i] = one(k)
	}
	return one(ks.Current), prev
}
