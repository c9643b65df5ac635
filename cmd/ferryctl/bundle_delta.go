package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/delta"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/tuf"
)

// deltaOpts are publish's --delta-* flags.
type deltaOpts struct {
	from   []string
	name   string // bundle name
	file   string // file name of the new bundle
	ratio  float64
	window int
	quiet  bool
}

func (o deltaOpts) check() (int, error) {
	w := o.window
	if w < delta.MinWindow || w > delta.MaxWindow || w&(w-1) != 0 {
		return 0, fmt.Errorf("%d is not a power of two from %d to %d", w, delta.MinWindow, delta.MaxWindow)
	}
	return w, nil
}

// basePath is the target an entry of --delta-from names: a full target
// path as given, or NAME/V/<file name> for a version.
func (o deltaOpts) basePath(from string) string {
	if strings.Contains(from, "/") {
		return from
	}
	return o.name + "/" + from + "/" + o.file
}

// patch is a patch uploaded and ready to publish.
type patch struct {
	base string // the base's target path
	tf   *metadata.TargetFiles
}

// publishPatches makes, for each --delta-from entry, the patch from that
// earlier bundle (fetched and verified through the session's updater) to
// target (the file being published as result), uploads the ones within
// the ratio and returns their targets.
func publishPatches(cmd *cobra.Command, s *session, target *os.File, result tuf.DeltaRef, info tuf.BundleInfo, o deltaOpts) ([]patch, error) {
	if len(o.from) == 0 {
		return nil, nil
	}
	window, err := o.check()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "ferryctl-delta-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	var out []patch
	seen := map[string]bool{}
	for i, from := range o.from {
		from = strings.TrimSpace(from)
		basePath := o.basePath(from)
		if from == "" || seen[basePath] {
			continue
		}
		seen[basePath] = true
		if basePath == result.Path {
			return nil, fmt.Errorf("--delta-from %s: that is the bundle being published", from)
		}
		btf, err := s.u.GetTargetInfo(basePath)
		if err != nil {
			return nil, fmt.Errorf("--delta-from %s: no target %s in the repository: %w", from, basePath, err)
		}
		if _, isPatch, _ := tuf.ParseDelta(btf.Custom); isPatch {
			return nil, fmt.Errorf("--delta-from %s: %s is a patch, not a bundle", from, basePath)
		}
		baseFile := fmt.Sprintf("%s/base-%d", tmp, i)
		bar := newProgress(cmd, o.quiet).transfer("fetch "+basePath, btf.Length)
		s.hc.watch(bar)
		_, _, err = s.u.DownloadTarget(btf, baseFile, "")
		s.hc.watch(nil)
		if err != nil {
			_ = bar.Exit()
			return nil, fmt.Errorf("--delta-from %s: fetch %s: %w", from, basePath, err)
		}
		_ = bar.Finish()
		baseSHA := hex.EncodeToString(btf.Hashes["sha256"])

		pf, length, digest, took, err := makePatch(cmd, tmp, i, baseFile, target, window)
		if err != nil {
			return nil, fmt.Errorf("patch from %s: %w", basePath, err)
		}
		ratio := float64(length) / float64(max(result.Length, 1))
		if ratio > o.ratio {
			pf.Close()
			fmt.Fprintf(cmd.ErrOrStderr(), "skipped the patch from %s: %d bytes is %.1f%% of the bundle, more than --delta-max-ratio %.0f%%\n",
				basePath, length, 100*ratio, 100*o.ratio)
			continue
		}
		if !o.quiet {
			fmt.Fprintf(cmd.ErrOrStderr(), "made the patch from %s: %d bytes (%.1f%% of the bundle) in %s\n", basePath, length, 100*ratio, took.Round(time.Millisecond))
		}
		d := tuf.DeltaInfo{
			Base:   tuf.DeltaRef{Path: basePath, SHA256: baseSHA, Length: btf.Length},
			Result: result, Format: delta.Format, Window: window,
		}
		tf, err := tuf.NewDeltaTargetFile(length, digest, info, d)
		if err != nil {
			pf.Close()
			return nil, err
		}
		bar = newProgress(cmd, o.quiet).transfer("upload "+tf.Path, length)
		err = upload(cmd, s, pf, length, digest, bar)
		pf.Close()
		if err != nil {
			_ = bar.Exit()
			return nil, fmt.Errorf("upload %s: %w", tf.Path, err)
		}
		out = append(out, patch{base: basePath, tf: tf})
	}
	return out, nil
}

// makePatch writes the patch from baseFile to target into a file in dir
// and returns it opened at its start, with its length and SHA-256.
func makePatch(cmd *cobra.Command, dir string, i int, baseFile string, target *os.File, window int) (*os.File, int64, string, time.Duration, error) {
	base, err := os.Open(baseFile)
	if err != nil {
		return nil, 0, "", 0, err
	}
	defer base.Close()
	pf, err := os.Create(fmt.Sprintf("%s/patch-%d", dir, i))
	if err != nil {
		return nil, 0, "", 0, err
	}
	h := sha256.New()
	start := time.Now()
	if err := delta.Make(cmd.Context(), io.MultiWriter(pf, h), base, target, delta.Options{Window: window}); err != nil {
		pf.Close()
		return nil, 0, "", 0, err
	}
	took := time.Since(start)
	length, err := pf.Seek(0, io.SeekCurrent)
	if err == nil {
		_, err = pf.Seek(0, io.SeekStart)
	}
	if err != nil {
		pf.Close()
		return nil, 0, "", 0, err
	}
	return pf, length, hex.EncodeToString(h.Sum(nil)), took, nil
}

// publishRoles signs the next version of each role and submits them as
// one batch: the bundle and its patches are published together or not at
// all.
func (s *session) publishRoles(cmd *cobra.Command, roles map[string]*metadata.Metadata[metadata.TargetsType], expiry time.Duration) (*repositoryv1.PublishTargetsResponse, error) {
	names := make([]string, 0, len(roles))
	for r := range roles {
		names = append(names, r)
	}
	slices.Sort(names)
	if len(names) == 0 {
		return nil, errors.New("nothing to publish")
	}
	var more []*repositoryv1.RoleMetadata
	for _, r := range names[1:] {
		signers, err := s.signers(cmd.Context(), r)
		if err != nil {
			return nil, err
		}
		md := roles[r]
		md.Signed.Version++
		md.Signed.Expires = time.Now().Add(expiry).UTC().Truncate(time.Second)
		raw, err := signTargets(md, signers)
		if err != nil {
			return nil, err
		}
		more = append(more, &repositoryv1.RoleMetadata{Role: r, Metadata: raw})
	}
	return s.publishRole(cmd, names[0], roles[names[0]], expiry, more...)
}
