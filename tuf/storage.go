package tuf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob" // also registers file:// URLs
	"gocloud.dev/gcerrors"
)

// Storage holds the repository's metadata and blobs. Keys are slash
// separated. Implementations must be safe for concurrent use, and a write
// must become visible whole or not at all.
type Storage interface {
	// ReadAll returns the object at key, or an error wrapping ErrNotExist.
	ReadAll(ctx context.Context, key string) ([]byte, error)
	// WriteAll replaces the object at key.
	WriteAll(ctx context.Context, key string, data []byte) error
	// Open returns a reader for the object at key, or an error wrapping
	// ErrNotExist.
	Open(ctx context.Context, key string) (Object, error)
	// Create returns a writer for key. The object appears when the writer
	// is closed; if ctx is canceled first, nothing is written.
	Create(ctx context.Context, key string) (io.WriteCloser, error)
	// Size returns the size of the object at key, or an error wrapping
	// ErrNotExist.
	Size(ctx context.Context, key string) (int64, error)
}

// Object is an open stored object: seekable, so it can serve byte ranges.
type Object interface {
	io.ReadSeekCloser
	Size() int64
	ModTime() time.Time
}

// BucketStorage is Storage on a gocloud.dev blob bucket: a local directory
// (file://), or any provider whose driver the program imports (s3://
// for S3 and S3-compatible stores).
type BucketStorage struct {
	bucket *blob.Bucket
}

var _ Storage = (*BucketStorage)(nil)

// OpenStorage opens the bucket at url ("file:///var/lib/ferry/repository",
// "s3://bucket?endpoint=...&region=..."). A plain path is taken as a local
// directory and created if missing.
func OpenStorage(ctx context.Context, url string) (*BucketStorage, error) {
	if filepath.IsAbs(url) {
		b, err := fileblob.OpenBucket(url, &fileblob.Options{
			CreateDir: true, DirFileMode: 0o700, NoTempDir: true, Metadata: fileblob.MetadataDontWrite,
		})
		if err != nil {
			return nil, fmt.Errorf("open repository directory: %w", err)
		}
		return &BucketStorage{bucket: b}, nil
	}
	b, err := blob.OpenBucket(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("open repository storage: %w", err)
	}
	return &BucketStorage{bucket: b}, nil
}

// NewBucketStorage wraps an open bucket.
func NewBucketStorage(b *blob.Bucket) *BucketStorage { return &BucketStorage{bucket: b} }

func notExist(err error) error {
	if gcerrors.Code(err) == gcerrors.NotFound {
		return fmt.Errorf("%w: %w", ErrNotExist, err)
	}
	return err
}

// ReadAll implements Storage.
func (s *BucketStorage) ReadAll(ctx context.Context, key string) ([]byte, error) {
	data, err := s.bucket.ReadAll(ctx, key)
	return data, notExist(err)
}

// WriteAll implements Storage.
func (s *BucketStorage) WriteAll(ctx context.Context, key string, data []byte) error {
	return s.bucket.WriteAll(ctx, key, data, nil)
}

// Open implements Storage.
func (s *BucketStorage) Open(ctx context.Context, key string) (Object, error) {
	r, err := s.bucket.NewReader(ctx, key, nil)
	if err != nil {
		return nil, notExist(err)
	}
	return r, nil
}

// Create implements Storage.
func (s *BucketStorage) Create(ctx context.Context, key string) (io.WriteCloser, error) {
	return s.bucket.NewWriter(ctx, key, nil)
}

// Size implements Storage.
func (s *BucketStorage) Size(ctx context.Context, key string) (int64, error) {
	a, err := s.bucket.Attributes(ctx, key)
	if err != nil {
		return 0, notExist(err)
	}
	return a.Size, nil
}

// Close closes the bucket.
func (s *BucketStorage) Close() error { return s.bucket.Close() }

// isNotExist reports whether err says a key does not exist.
func isNotExist(err error) bool { return errors.Is(err, ErrNotExist) }
