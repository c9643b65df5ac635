package agent

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/delta"
)

// Delta updates. When the desired bundle has a signed patch from exactly
// the bundle the device runs, the agent downloads the patch instead of the
// whole bundle, applies it to the running bundle's file, streaming, into
// the same file a full download would fill, and verifies the result
// against the full target's signed length and hashes before anything is
// installed. Whatever goes wrong on that path (the running bundle's file
// is missing or not the signed base, the patch's metadata does not name
// exactly this base and result, its download or its verification fails,
// the result does not verify) makes the job download the full bundle, with
// a CodeDeltaFallback notice in its history; a patch never fails a job.

// BaseOpener is implemented by an Installer that can give the agent the
// file of the bundle the device runs (AB does). Without it, jobs always
// download full bundles.
type BaseOpener interface {
	// OpenBase opens, read-only, the installed file of b, the bundle the
	// device runs. The agent checks its length and SHA-256 against the
	// patch's signed base before it uses it, and closes it.
	OpenBase(ctx context.Context, b Bundle) (*os.File, error)
}

// PatchFile names one end of a patch: a target by path, SHA-256 (hex) and
// length.
type PatchFile struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Length uint64 `json:"length"`
}

// PatchInfo is the signed custom metadata of a patch target, under
// "delta": the patch turns Base into Result.
type PatchInfo struct {
	Base   PatchFile `json:"base"`
	Result PatchFile `json:"result"`
	// Format is the patch format (delta.Format).
	Format string `json:"format"`
	// Window bounds the memory applying the patch takes (delta.Options).
	Window int `json:"window"`
}

// ParsePatchInfo reads a patch's metadata from a target's "custom" field;
// ok is false when the target is not a patch.
func ParsePatchInfo(custom []byte) (info PatchInfo, ok bool, err error) {
	var c struct {
		Delta *PatchInfo `json:"delta"`
	}
	if len(custom) == 0 || string(custom) == "null" {
		return PatchInfo{}, false, nil
	}
	if err := json.Unmarshal(custom, &c); err != nil {
		return PatchInfo{}, false, fmt.Errorf("patch custom metadata: %w", err)
	}
	if c.Delta == nil {
		return PatchInfo{}, false, nil
	}
	return *c.Delta, true, nil
}

// PatchPath is the target path of the patch from the bundle whose SHA-256
// is baseSHA256 (hex) to the target at result.
func PatchPath(result, baseSHA256 string) string {
	return result + ".delta-" + baseSHA256[:min(16, len(baseSHA256))]
}

// matches reports whether f names exactly b.
func (f PatchFile) matches(b *Bundle) bool {
	return f.Path == b.TargetPath && f.SHA256 == b.SHA256 && f.Length == b.Length
}

// fetchJob is what fetching one job's bundle needs.
type fetchJob struct {
	conn   Conn
	stream Stream
	d      Delta
	client *http.Client
	// lookup returns a target's verified TUF description.
	lookup func(path string) (*metadata.TargetFiles, error)
	cur    *Bundle // the running bundle; nil for none
	want   *Bundle
	tf     *metadata.TargetFiles // want's verified description
	part   string                // the file to install
}

// streamError is a send on the stream that failed: the session ends, the
// job does not.
type streamError struct{ err error }

func (e *streamError) Error() string { return e.err.Error() }
func (e *streamError) Unwrap() error { return e.err }

// fetch makes f.part the verified desired bundle: from a signed patch when
// one can be used, otherwise from the full target.
func (a *Agent) fetch(ctx context.Context, f *fetchJob) error {
	p, base, reason := a.findPatch(ctx, f)
	if p != nil {
		err := a.fetchPatch(ctx, f, p, base)
		base.Close()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var se *streamError
		if errors.As(err, &se) {
			return err
		}
		reason = err
	}
	a.dl.Method = MethodFull
	if reason != nil {
		a.log.WarnContext(ctx, "patch not used; downloading the full bundle", "job", f.d.JobID, "reason", reason)
		if err := a.notice(f.stream, f.d, StepDownloading, CodeDeltaFallback, reason.Error()+"; downloading the full bundle"); err != nil {
			return &streamError{err}
		}
	} else if err := a.progress(f.stream, f.d, StepDownloading, 0); err != nil {
		return &streamError{err}
	}
	return a.fetchFull(ctx, f)
}

// fetchFull downloads the full target to f.part and verifies it.
func (a *Agent) fetchFull(ctx context.Context, f *fetchJob) error {
	if err := a.download(ctx, f, nil, f.part, f.tf.Length); err != nil {
		return err
	}
	if err := a.progress(f.stream, f.d, StepVerifying, 0); err != nil {
		return &streamError{err}
	}
	if err := verifyFile(ctx, f.part, f.tf); err != nil {
		if rerr := removeFile(f.part); rerr != nil { // never install, never resume from it
			a.log.WarnContext(ctx, "removing a download that failed verification", "err", rerr)
		}
		return err
	}
	return nil
}

// download fetches part (length bytes, unverified) from the URL of the
// desired bundle's download token, rewritten by url when it is not nil,
// resuming with Range, and counts the bytes.
func (a *Agent) download(ctx context.Context, f *fetchJob, url func(string) (string, error), part string, length int64) error {
	dl := &downloader{
		client: f.client, attempts: a.cfg.DownloadAttempts, backoff: a.cfg.DownloadBackoff,
		token: func(ctx context.Context) (DownloadToken, error) {
			tok, err := f.conn.DownloadToken(ctx, f.want.TargetPath)
			if err == nil && url != nil {
				tok.URL, err = url(tok.URL)
			}
			return tok, err
		},
		unavailable: func(ctx context.Context, attempt int, err error) error {
			delay := a.backoff(attempt)
			a.log.WarnContext(ctx, "download token unavailable; retrying", "job", f.d.JobID, "err", err, "in", delay.Round(time.Millisecond))
			return sleep(ctx, delay)
		},
	}
	lastPct := uint32(0)
	start := a.dl.Bytes
	dl.progress = func(pct uint32, received int64) {
		a.dl.Bytes = start + uint64(received)
		if pct >= lastPct+25 && pct < 100 {
			lastPct = pct
			_ = a.progress(f.stream, f.d, StepDownloading, pct) // best effort; a broken stream shows at the next send
		}
	}
	return dl.fetch(ctx, part, length)
}

// findPatch looks for a signed patch from the running bundle to the
// desired one. It returns the patch and the running bundle's file, opened
// and checked; or no patch and nil when there is none to try; or no patch
// and the reason when one exists but cannot be used.
func (a *Agent) findPatch(ctx context.Context, f *fetchJob) (*patchTarget, *os.File, error) {
	bo, ok := a.cfg.Installer.(BaseOpener)
	if f.cur == nil || !ok || a.cfg.DeltaMaxWindow < 0 {
		return nil, nil, nil
	}
	path := PatchPath(f.want.TargetPath, f.cur.SHA256)
	tf, err := f.lookup(path)
	if err != nil {
		a.log.DebugContext(ctx, "no patch from the running bundle", "job", f.d.JobID, "patch", path, "err", err)
		return nil, nil, nil
	}
	var custom []byte
	if tf.Custom != nil {
		custom = *tf.Custom
	}
	info, ok, err := ParsePatchInfo(custom)
	switch {
	case err != nil:
		return nil, nil, fmt.Errorf("patch %s: %w", path, err)
	case !ok:
		return nil, nil, fmt.Errorf("patch %s: its signed metadata has no delta section", path)
	case !info.Base.matches(f.cur):
		return nil, nil, fmt.Errorf("patch %s: its signed base %s (%d bytes, sha256 %s) is not the running bundle %s (%d bytes, sha256 %s)",
			path, info.Base.Path, info.Base.Length, info.Base.SHA256, f.cur.TargetPath, f.cur.Length, f.cur.SHA256)
	case !info.Result.matches(f.want):
		return nil, nil, fmt.Errorf("patch %s: its signed result %s (%d bytes, sha256 %s) is not the desired bundle",
			path, info.Result.Path, info.Result.Length, info.Result.SHA256)
	case info.Format != delta.Format:
		return nil, nil, fmt.Errorf("patch %s: format %q, this agent applies %q", path, info.Format, delta.Format)
	case info.Window <= 0 || info.Window > a.cfg.DeltaMaxWindow:
		return nil, nil, fmt.Errorf("patch %s: it needs a %d-byte window, this device allows at most %d", path, info.Window, a.cfg.DeltaMaxWindow)
	}
	base, err := bo.OpenBase(ctx, *f.cur)
	if err != nil {
		return nil, nil, fmt.Errorf("the running bundle's file: %w", err)
	}
	sha, n, err := digest(ctx, base)
	if err == nil && (sha != f.cur.SHA256 || uint64(n) != f.cur.Length) {
		err = fmt.Errorf("the running bundle's file is modified (%d bytes, sha256 %s; signed: %d bytes, sha256 %s)", n, sha, f.cur.Length, f.cur.SHA256)
	}
	if err == nil {
		_, err = base.Seek(0, io.SeekStart)
	}
	if err != nil {
		base.Close()
		return nil, nil, err
	}
	return &patchTarget{path: path, tf: tf, info: info}, base, nil
}

// patchTarget is a usable signed patch.
type patchTarget struct {
	path string
	tf   *metadata.TargetFiles
	info PatchInfo
}

// fetchPatch downloads the patch, verifies it through TUF, applies it to
// base into f.part and verifies the result against the desired bundle's
// signed metadata. On error f.part is removed.
func (a *Agent) fetchPatch(ctx context.Context, f *fetchJob, p *patchTarget, base *os.File) error {
	a.dl.Method = MethodDelta
	if err := a.progress(f.stream, f.d, StepDownloading, 0); err != nil {
		return &streamError{err}
	}
	patchPart := filepath.Join(a.cfg.DownloadDir, f.want.SHA256+".delta-"+f.cur.SHA256[:min(16, len(f.cur.SHA256))]+".part")
	defer func() {
		if err := removeFile(patchPart); err != nil {
			a.log.WarnContext(ctx, "removing a patch", "err", err)
		}
	}()
	// The desired bundle's token fetches the patches to it: the patch's
	// URL is the bundle's, with the patch's consistent-snapshot name.
	patchURL := func(bundleURL string) (string, error) {
		return siblingURL(bundleURL, hashedName(f.want.TargetPath, f.want.SHA256), hashedName(p.path, hex.EncodeToString(p.tf.Hashes["sha256"])))
	}
	if err := a.download(ctx, f, patchURL, patchPart, p.tf.Length); err != nil {
		return fmt.Errorf("the patch %s: %w", p.path, err)
	}
	if err := a.progress(f.stream, f.d, StepVerifying, 0); err != nil {
		return &streamError{err}
	}
	if err := verifyFile(ctx, patchPart, p.tf); err != nil {
		return fmt.Errorf("the patch %s was refused: %w", p.path, err)
	}
	err := a.applyPatch(ctx, patchPart, f.part, base, p.info.Window)
	if err == nil {
		if err = verifyFile(ctx, f.part, f.tf); err != nil {
			err = fmt.Errorf("the patched bundle does not match its signed metadata: %w", err)
		}
	}
	if err != nil {
		if rerr := removeFile(f.part); rerr != nil {
			a.log.WarnContext(ctx, "removing a patched bundle that failed", "err", rerr)
		}
		return err
	}
	return nil
}

// applyPatch writes the result of the patch in patchPath on base to part,
// holding about window bytes in memory.
func (a *Agent) applyPatch(ctx context.Context, patchPath, part string, base *os.File, window int) error {
	in, err := os.Open(patchPath)
	if err != nil {
		return fmt.Errorf("the patch: %w", err)
	}
	defer in.Close()
	out, err := openPart(part)
	if err != nil {
		return err
	}
	defer out.Close()
	if _, err := out.Truncate(); err != nil {
		return err
	}
	w := bufio.NewWriterSize(out, 64<<10)
	if err := delta.Apply(ctx, w, base, ctxReader{ctx, bufio.NewReaderSize(in, 64<<10)}, delta.Options{Window: window}); err != nil {
		return fmt.Errorf("applying the patch: %w", err)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return out.Sync()
}

// hashedName is the name a target is served under with consistent
// snapshots (TUF): "<dir>/<sha256>.<base>".
func hashedName(path, sha256Hex string) string {
	dir, base := "", path
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		dir, base = path[:i+1], path[i+1:]
	}
	return dir + sha256Hex + "." + base
}

// siblingURL returns raw, the URL of the target served as name, with
// other in its place; the query (a pre-signed URL's token) stays.
func siblingURL(raw, name, other string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("download URL: %w", err)
	}
	prefix, ok := strings.CutSuffix(u.Path, "/"+name)
	if !ok {
		return "", fmt.Errorf("download URL path %s does not end with the bundle's name %s", u.Path, name)
	}
	u.Path, u.RawPath = prefix+"/"+other, ""
	return u.String(), nil
}

// digest returns the SHA-256 (hex) and length of what f holds from its
// current offset.
func digest(ctx context.Context, f *os.File) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, ctxReader{ctx, f})
	if err != nil {
		return "", n, fmt.Errorf("reading the running bundle's file: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
