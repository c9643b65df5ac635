package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/proto/ferry/repository/v1/repositoryv1connect"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/tuf"
)

// repository is ferryd's TUF repository with what it was opened from.
type repository struct {
	repo    *tuf.Repository
	storage *tuf.BucketStorage
	every   time.Duration // re-signing check
	check   time.Duration // check of the stored timestamp
	notices repositoryNotices
	log     *slog.Logger
}

// repositoryNotices is how instances that share a repository tell each
// other it changed: the Redis store has it; the embedded store serves one
// instance, which follows a shared bucket by its periodic check alone.
type repositoryNotices interface {
	PublishRepositoryChange(ctx context.Context) error
	SubscribeRepositoryChanges(ctx context.Context, fn func()) error
}

// repositoryLease is the lease that serializes writes to the repository
// among the instances that share it.
const repositoryLease = "repository"

// openRepository opens the repository's storage (RepositoryConfig.URL, or
// <data-dir>/repository) and ferryd's online keys (<data-dir>/tuf-keys,
// created on first start). Writes take the store's repository lease, and
// each write is announced on the store (when it carries notices).
func openRepository(ctx context.Context, cfg Config, log *slog.Logger, devices store.Devices) (*repository, error) {
	url := cfg.Repository.URL
	if url == "" {
		dir, err := filepath.Abs(filepath.Join(cfg.DataDir, "repository"))
		if err != nil {
			return nil, err
		}
		url = dir
	}
	storage, err := tuf.OpenStorage(ctx, url)
	if err != nil {
		return nil, err
	}
	keys, err := tuf.EnsureOnlineKeys(filepath.Join(cfg.DataDir, "tuf-keys"))
	if err != nil {
		storage.Close()
		return nil, fmt.Errorf("online keys: %w", err)
	}
	log = log.With("component", "repository")
	r := &repository{storage: storage, every: cfg.Repository.ResignInterval, check: cfg.Repository.CheckInterval, log: log}
	tcfg := tuf.Config{
		Storage:         storage,
		Keys:            keys,
		Logger:          log,
		SnapshotExpiry:  cfg.Repository.SnapshotExpiry,
		TimestampExpiry: cfg.Repository.TimestampExpiry,
		MaxBlobBytes:    cfg.Repository.MaxBlobBytes,
		Now:             cfg.Repository.Clock,
	}
	if leases, ok := devices.(store.Leases); ok {
		tcfg.Lock = leaseLock{leases: leases, holder: instanceName(), ttl: 15 * time.Second}
	}
	if n, ok := devices.(repositoryNotices); ok {
		r.notices = n
		tcfg.Changed = r.announce
	}
	if r.repo, err = tuf.Open(ctx, tcfg); err != nil {
		storage.Close()
		return nil, err
	}
	return r, nil
}

// instanceName names this process among ferryd instances: host, pid and a
// random part.
func instanceName() string {
	host, _ := os.Hostname()
	nonce := make([]byte, 4)
	rand.Read(nonce)
	return fmt.Sprintf("%s/%d/%x", host, os.Getpid(), nonce)
}

// announce tells the other instances that this one wrote the repository.
// A lost notice only delays them until their next check.
func (r *repository) announce(ctx context.Context) {
	if err := r.notices.PublishRepositoryChange(context.WithoutCancel(ctx)); err != nil {
		r.log.WarnContext(ctx, "announce the repository change to other instances", "err", err)
	}
}

// run keeps the repository re-signed and in step with what other
// instances write, until ctx ends.
func (r *repository) run(ctx context.Context) {
	poke := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Go(func() { r.repo.Run(ctx, r.every) })
	wg.Go(func() { r.repo.Watch(ctx, r.check, poke) })
	if r.notices != nil {
		wg.Go(func() {
			for ctx.Err() == nil {
				err := r.notices.SubscribeRepositoryChanges(ctx, func() {
					select {
					case poke <- struct{}{}:
					default: // a check is due already
					}
				})
				if err != nil && ctx.Err() == nil {
					r.log.WarnContext(ctx, "repository change notices", "err", err)
					select {
					case <-ctx.Done():
					case <-time.After(r.check):
					}
				}
			}
		})
	}
	wg.Wait()
}

func (r *repository) close() error {
	if r == nil {
		return nil
	}
	return r.storage.Close()
}

// leaseLock is tuf.Locker on the store's leases: the repository lease,
// renewed while it is held, so that a holder that dies frees it after ttl.
type leaseLock struct {
	leases store.Leases
	holder string
	ttl    time.Duration
}

func (l leaseLock) Lock(ctx context.Context) (func(), error) {
	wait := 5 * time.Millisecond
	for {
		_, err := l.leases.AcquireLease(ctx, repositoryLease, l.holder, l.ttl)
		if err == nil {
			break
		}
		if !errors.Is(err, store.ErrLeaseHeld) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("another instance holds the repository lease: %w", ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { // renew while held
		defer close(done)
		t := time.NewTicker(l.ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_, _ = l.leases.AcquireLease(context.WithoutCancel(ctx), repositoryLease, l.holder, l.ttl)
			}
		}
	}()
	return func() {
		close(stop)
		<-done
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = l.leases.ReleaseLease(rctx, repositoryLease, l.holder) // else it lapses after ttl
	}, nil
}

// repositoryService is the Connect handler of RepositoryService: thin, it
// converts and calls the tuf package.
type repositoryService struct {
	repositoryv1connect.UnimplementedRepositoryServiceHandler
	repo *tuf.Repository
	log  *slog.Logger
}

var _ repositoryv1connect.RepositoryServiceHandler = (*repositoryService)(nil)

func (s *repositoryService) UploadBlob(ctx context.Context, stream *connect.ClientStream[repositoryv1.UploadBlobRequest]) (*connect.Response[repositoryv1.UploadBlobResponse], error) {
	if !stream.Receive() {
		if err := stream.Err(); err != nil {
			return nil, connectError(ctx, s.log, err)
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("the first message must carry the blob's info"))
	}
	info := stream.Msg().GetInfo()
	if info == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("the first message must carry the blob's info"))
	}
	if info.GetLength() > 1<<62 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("length is out of range"))
	}
	err := s.repo.UploadBlob(ctx, int64(info.GetLength()), info.GetSha256(), &chunkReader{stream: stream})
	if err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	return connect.NewResponse(&repositoryv1.UploadBlobResponse{Length: info.GetLength(), Sha256: info.GetSha256()}), nil
}

// chunkReader reads the chunks of an UploadBlob stream.
type chunkReader struct {
	stream *connect.ClientStream[repositoryv1.UploadBlobRequest]
	buf    []byte
}

var errSecondInfo = connect.NewError(connect.CodeInvalidArgument, errors.New("only the first message may carry info"))

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.buf) == 0 {
		if !c.stream.Receive() {
			if err := c.stream.Err(); err != nil {
				return 0, err
			}
			return 0, io.EOF
		}
		if c.stream.Msg().GetInfo() != nil {
			return 0, errSecondInfo
		}
		c.buf = c.stream.Msg().GetChunk()
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

func (s *repositoryService) PublishTargets(ctx context.Context, req *connect.Request[repositoryv1.PublishTargetsRequest]) (*connect.Response[repositoryv1.PublishTargetsResponse], error) {
	role := req.Msg.GetRole()
	if role == "" {
		role = "targets"
	}
	batch := []tuf.SignedMetadata{{Role: role, Data: req.Msg.GetMetadata()}}
	for _, rm := range req.Msg.GetAdditionalRoles() {
		batch = append(batch, tuf.SignedMetadata{Role: rm.GetRole(), Data: rm.GetMetadata()})
	}
	v, err := s.repo.PublishTargets(ctx, batch)
	if err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	resp := &repositoryv1.PublishTargetsResponse{
		TargetsVersion: uint64(v.Targets), SnapshotVersion: uint64(v.Snapshot), TimestampVersion: uint64(v.Timestamp),
	}
	if md, ok := s.repo.TargetsOf(role); ok {
		resp.TargetsVersion = uint64(md.Signed.Version)
	}
	return connect.NewResponse(resp), nil
}

func (s *repositoryService) PublishRoot(ctx context.Context, req *connect.Request[repositoryv1.PublishRootRequest]) (*connect.Response[repositoryv1.PublishRootResponse], error) {
	v, err := s.repo.PublishRoot(ctx, req.Msg.GetMetadata())
	if err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	return connect.NewResponse(&repositoryv1.PublishRootResponse{RootVersion: uint64(v.Root)}), nil
}

func (s *repositoryService) ListBundles(ctx context.Context, req *connect.Request[repositoryv1.ListBundlesRequest]) (*connect.Response[repositoryv1.ListBundlesResponse], error) {
	size := pageSize(req.Msg.GetPageSize())
	after, err := afterToken(req.Msg.GetPageToken())
	if err != nil {
		return nil, err
	}
	// What another instance published is listed here too.
	if _, err := s.repo.Refresh(ctx); err != nil {
		s.log.WarnContext(ctx, "check the stored repository", "err", err)
	}
	bundles := s.repo.Bundles(after, size)
	resp := &repositoryv1.ListBundlesResponse{Bundles: make([]*repositoryv1.Bundle, len(bundles))}
	for i, b := range bundles {
		resp.Bundles[i] = repoBundleToProto(b)
	}
	if len(bundles) == size {
		resp.NextPageToken = pageToken(bundles[len(bundles)-1].Path)
	}
	return connect.NewResponse(resp), nil
}

func (s *repositoryService) GetBundle(ctx context.Context, req *connect.Request[repositoryv1.GetBundleRequest]) (*connect.Response[repositoryv1.GetBundleResponse], error) {
	b, err := s.repo.FindBundle(ctx, req.Msg.GetTargetPath())
	if err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	return connect.NewResponse(&repositoryv1.GetBundleResponse{Bundle: repoBundleToProto(b)}), nil
}

func (s *repositoryService) GetOnlineKeys(ctx context.Context, req *connect.Request[repositoryv1.GetOnlineKeysRequest]) (*connect.Response[repositoryv1.GetOnlineKeysResponse], error) {
	v := s.repo.Versions()
	resp := &repositoryv1.GetOnlineKeysResponse{
		RootVersion: uint64(v.Root), TargetsVersion: uint64(v.Targets),
		SnapshotVersion: uint64(v.Snapshot), TimestampVersion: uint64(v.Timestamp),
	}
	keys := s.repo.OnlineKeys()
	for _, role := range []string{"snapshot", "timestamp"} {
		k := keys[role]
		resp.Keys = append(resp.Keys, &repositoryv1.OnlineKey{
			Role: role, KeyId: tuf.KeyID(k), KeyType: k.Type, Scheme: k.Scheme, PublicKey: k.Value.PublicKey,
		})
	}
	return connect.NewResponse(resp), nil
}

func repoBundleToProto(b tuf.Bundle) *repositoryv1.Bundle {
	p := &repositoryv1.Bundle{
		TargetPath:       b.Path,
		Length:           uint64(b.Length),
		Hashes:           b.Hashes,
		Name:             b.Info.Name,
		Version:          b.Info.Version,
		Hardware:         b.Info.Hardware,
		ReleaseNotes:     b.Info.ReleaseNotes,
		DowngradeAllowed: b.Info.DowngradeAllowed,
		Role:             b.Role,
	}
	if !b.Info.Published.IsZero() {
		p.PublishTime = timestamppb.New(b.Info.Published)
	}
	return p
}
