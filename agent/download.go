package agent

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

// BundleInfo is Ferry's custom metadata of a target, signed in the TUF
// targets metadata under "ferry".
type BundleInfo struct {
	Name             string   `json:"name"`
	Version          string   `json:"version"`
	Hardware         []string `json:"hardware,omitempty"`
	DowngradeAllowed bool     `json:"downgrade_allowed,omitempty"`
}

// ParseBundleInfo reads Ferry's custom metadata from a target's "custom"
// field; a target without it has the zero BundleInfo.
func ParseBundleInfo(custom []byte) (BundleInfo, error) {
	var c struct {
		Ferry *BundleInfo `json:"ferry"`
	}
	if len(custom) == 0 || string(custom) == "null" {
		return BundleInfo{}, nil
	}
	if err := json.Unmarshal(custom, &c); err != nil {
		return BundleInfo{}, fmt.Errorf("target custom metadata: %w", err)
	}
	if c.Ferry == nil {
		return BundleInfo{}, nil
	}
	return *c.Ferry, nil
}

// tufFetcher is go-tuf's Fetcher over the device's mTLS HTTP client.
type tufFetcher struct {
	ctx    context.Context
	client *http.Client
}

// DownloadFile implements fetcher.Fetcher.
func (f tufFetcher) DownloadFile(url string, maxLength int64, timeout time.Duration) ([]byte, error) {
	ctx := f.ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &metadata.ErrDownloadHTTP{StatusCode: resp.StatusCode, URL: url}
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxLength+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("%s is over %d bytes", url, maxLength)}
	}
	return data, nil
}

// target refreshes the TUF metadata with go-tuf's updater, starting from
// root, and returns the verified description of path, a lookup of other
// targets in the same refreshed metadata, and the newest trusted root.
func target(ctx context.Context, client *http.Client, metadataURL string, root []byte, path string) (*metadata.TargetFiles, func(string) (*metadata.TargetFiles, error), []byte, error) {
	cfg, err := config.New(metadataURL, root)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("tuf config: %w", err)
	}
	cfg.Fetcher = tufFetcher{ctx: ctx, client: client}
	cfg.DisableLocalCache = true
	up, err := updater.New(cfg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("tuf trusted root: %w", err)
	}
	if err := up.Refresh(); err != nil {
		return nil, nil, nil, &jobError{StepDownloading, CodeTUFRefresh, fmt.Errorf("tuf refresh: %w", err)}
	}
	newRoot, err := up.GetTrustedMetadataSet().Root.ToBytes(false)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("tuf root: %w", err)
	}
	tf, err := up.GetTargetInfo(path)
	if err != nil {
		return nil, nil, newRoot, &jobError{StepDownloading, CodeTUFUnknownTarget, fmt.Errorf("tuf target %s: %w", path, err)}
	}
	return tf, up.GetTargetInfo, newRoot, nil
}

// errUnauthorized: the download token was refused; a new one is needed.
var errUnauthorized = errors.New("download token refused")

// downloader streams a target to disk and resumes after interruptions.
type downloader struct {
	client   *http.Client
	attempts int
	backoff  time.Duration
	token    func(ctx context.Context) (DownloadToken, error)
	// unavailable waits before the next token request after ferryd
	// answered that it cannot issue one now (ErrUnavailable); attempt
	// counts from 1. Such answers never fail the download.
	unavailable func(ctx context.Context, attempt int, err error) error
	// progress is called after each write with the percent of the target
	// the file holds and the bytes received over the network so far.
	progress func(percent uint32, received int64)
	received int64
}

// getToken asks for a download token until ferryd issues one or refuses
// for another reason than being unavailable (or ctx ends).
func (d *downloader) getToken(ctx context.Context) (DownloadToken, error) {
	for attempt := 1; ; attempt++ {
		tok, err := d.token(ctx)
		if err == nil || !errors.Is(err, ErrUnavailable) || d.unavailable == nil {
			return tok, err
		}
		if err := d.unavailable(ctx, attempt, err); err != nil {
			return DownloadToken{}, err
		}
	}
}

// fetch downloads length bytes to part, resuming from what part already
// holds. It returns once part holds length bytes (unverified).
func (d *downloader) fetch(ctx context.Context, part string, length int64) error {
	tok, err := d.getToken(ctx)
	if err != nil {
		return &jobError{StepDownloading, CodeDownloadToken, err}
	}
	var last error
	for attempt := range d.attempts {
		if attempt > 0 {
			if err := sleep(ctx, d.backoff<<min(attempt-1, 6)); err != nil {
				return err
			}
		}
		err := d.once(ctx, part, length, tok)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		last = err
		if errors.Is(err, errUnauthorized) {
			if tok, err = d.getToken(ctx); err != nil {
				return &jobError{StepDownloading, CodeDownloadToken, err}
			}
		}
	}
	return &jobError{StepDownloading, CodeDownloadFailed, fmt.Errorf("download after %d attempts: %w", d.attempts, last)}
}

func (d *downloader) once(ctx context.Context, part string, length int64, tok DownloadToken) error {
	f, err := openPart(part)
	if err != nil {
		return err
	}
	defer f.Close()
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	if have > length {
		if have, err = f.Truncate(); err != nil {
			return err
		}
	}
	if have == length {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, tok.URL, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusOK:
		// The whole target: start over.
		if have, err = f.Truncate(); err != nil {
			return err
		}
	case http.StatusRequestedRangeNotSatisfiable:
		_, err := f.Truncate()
		return err
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("%w: HTTP %d", errUnauthorized, resp.StatusCode)
	default:
		return fmt.Errorf("download: HTTP %d", resp.StatusCode)
	}
	buf := make([]byte, 32<<10)
	body := io.LimitReader(resp.Body, length-have)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := f.Write(buf[:n]); err != nil {
				return err
			}
			have += int64(n)
			d.received += int64(n)
			if d.progress != nil {
				d.progress(uint32(have*100/max(length, 1)), d.received)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("download interrupted at %d of %d bytes: %w", have, length, rerr)
		}
	}
	if have != length {
		return fmt.Errorf("download ended at %d of %d bytes", have, length)
	}
	return f.Sync()
}

// verifyFile checks the file's length and every hash TUF lists that the
// agent knows (sha256 and sha512; sha256 must be among them).
func verifyFile(ctx context.Context, path string, tf *metadata.TargetFiles) error {
	f, err := os.Open(path)
	if err != nil {
		return &jobError{StepVerifying, CodeLengthMismatch, err}
	}
	defer f.Close()
	hashes := map[string]hash.Hash{}
	for alg := range tf.Hashes {
		switch alg {
		case "sha256":
			hashes[alg] = sha256.New()
		case "sha512":
			hashes[alg] = sha512.New()
		}
	}
	if hashes["sha256"] == nil {
		return &jobError{StepVerifying, CodeHashMismatch, errors.New("the target's metadata has no sha256")}
	}
	ws := make([]io.Writer, 0, len(hashes))
	for _, h := range hashes {
		ws = append(ws, h)
	}
	n, err := io.Copy(io.MultiWriter(ws...), ctxReader{ctx, io.LimitReader(f, tf.Length+1)})
	if err != nil {
		return &jobError{StepVerifying, CodeHashMismatch, err}
	}
	if n != tf.Length {
		return &jobError{StepVerifying, CodeLengthMismatch, fmt.Errorf("downloaded %d bytes, the signed metadata says %d", n, tf.Length)}
	}
	for alg, h := range hashes {
		if got, want := hex.EncodeToString(h.Sum(nil)), hex.EncodeToString(tf.Hashes[alg]); got != want {
			return &jobError{StepVerifying, CodeHashMismatch, fmt.Errorf("%s %s, the signed metadata says %s", alg, got, want)}
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
