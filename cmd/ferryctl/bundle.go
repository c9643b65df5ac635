package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/delta"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/tuf"
)

func newBundleCmd(a *app) *cobra.Command {
	opts := &repoOpts{}
	cmd := &cobra.Command{Use: "bundle", Short: "Publish, list, show and remove bundles"}
	opts.bind(cmd)
	cmd.AddCommand(newBundlePublishCmd(a, opts), newBundleListCmd(a), newBundleShowCmd(a), newBundleRemoveCmd(a, opts), newBundleFetchCmd(a, opts))
	return cmd
}

func newBundlePublishCmd(a *app, opts *repoOpts) *cobra.Command {
	var name, version, path, notes, notesFile string
	var hardware, deltaFrom []string
	var downgrade, quiet bool
	var expiry time.Duration
	var deltaRatio float64
	var deltaWindow int
	cmd := &cobra.Command{
		Use:   "publish FILE --name NAME --version VERSION [--delta-from V1,V2...]",
		Short: "Upload a bundle and publish it, signed with the offline keys",
		Long: `publish computes FILE's length and SHA-256, streams it to ferryd, adds it
as a target (path NAME/VERSION/<file name> unless --path is given) with
its custom metadata to the role that holds that path, signs that role's
next version with the offline keys in <repo-dir>/keys, and submits it.
ferryd verifies the signatures against the trusted root before it
accepts anything. VERSION must be a semantic version (MAJOR.MINOR.PATCH,
optional -PRERELEASE and +BUILD, a leading "v" accepted): devices order
versions by SemVer 2.0 precedence to refuse downgrades. While it uploads,
a progress bar with the rate and the time left is drawn on stderr when it
is a terminal (nothing otherwise).

--delta-from V1,V2... also publishes a patch from each earlier version to
this one, so that devices running it download the patch instead of the
whole bundle. Each earlier version is fetched from the repository and
verified as a device verifies it (so the patch's base is exactly what
devices run): V is the target NAME/V/<file name> as publish names it, or a
full target path. A patch is its own target, <path>.delta-<16 hex digits
of the base's SHA-256>, with signed custom metadata naming its base and
result; it is published in the same signed batch as the bundle. A patch
larger than --delta-max-ratio of the bundle is not worth its download and
is skipped with a message. --delta-window bounds what a device holds in
memory while it applies a patch (a power of two, 4 KiB to 512 MiB).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if name == "" || version == "" {
				return errors.New("--name and --version are required")
			}
			if deltaRatio <= 0 || deltaRatio > 1 {
				return fmt.Errorf("--delta-max-ratio %v: want more than 0 and at most 1", deltaRatio)
			}
			if _, err := (deltaOpts{window: deltaWindow}).check(); err != nil {
				return fmt.Errorf("--delta-window: %w", err)
			}
			if err := tuf.ValidBundleVersion(version); err != nil {
				return fmt.Errorf("--version: %w", err)
			}
			if notesFile != "" {
				raw, err := os.ReadFile(notesFile)
				if err != nil {
					return err
				}
				notes = string(raw)
			}
			if path == "" {
				path = name + "/" + version + "/" + filepath.Base(args[0])
			}
			if err := tuf.ValidTargetPath(path); err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			h := sha256.New()
			length, err := io.Copy(h, f)
			if err != nil {
				return err
			}
			digest := hex.EncodeToString(h.Sum(nil))
			info := tuf.BundleInfo{
				Name: name, Version: version, Hardware: hardware, ReleaseNotes: notes,
				DowngradeAllowed: downgrade, Published: time.Now().UTC().Truncate(time.Second),
			}
			tf, err := tuf.NewTargetFile(path, length, digest, info)
			if err != nil {
				return err
			}
			// Verify the repository and unlock the keys before the upload.
			s, err := openSession(a, opts, true)
			if err != nil {
				return err
			}
			role, md, err := s.roleFor(path)
			if err != nil {
				return err
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			bar := newProgress(cmd, quiet).transfer("upload "+path, length)
			if err := upload(cmd, s, f, length, digest, bar); err != nil {
				_ = bar.Exit()
				return fmt.Errorf("upload: %w", err)
			}
			md.Signed.Targets[path] = tf
			dopts := deltaOpts{from: deltaFrom, name: name, file: filepath.Base(args[0]), ratio: deltaRatio, window: deltaWindow, quiet: quiet}
			patches, err := publishPatches(cmd, s, f, tuf.DeltaRef{Path: path, SHA256: digest, Length: length}, info, dopts)
			if err != nil {
				return err
			}
			roles := map[string]*metadata.Metadata[metadata.TargetsType]{role: md}
			for _, p := range patches {
				prole, pmd, err := s.roleFor(p.tf.Path)
				if err != nil {
					return err
				}
				pmd.Signed.Targets[p.tf.Path] = p.tf
				roles[prole] = pmd
			}
			resp, err := s.publishRoles(cmd, roles, expiry)
			if err != nil {
				return fmt.Errorf("publish: %w", err)
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "published %s (%d bytes, sha256 %s) in %s v%d; snapshot v%d, timestamp v%d\n",
				path, length, digest, role, md.Signed.Version, resp.GetSnapshotVersion(), resp.GetTimestampVersion())
			for _, p := range patches {
				fmt.Fprintf(cmd.OutOrStdout(), "published patch %s from %s (%d bytes, %.1f%% of the bundle)\n",
					p.tf.Path, p.base, p.tf.Length, 100*float64(p.tf.Length)/float64(max(length, 1)))
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&name, "name", "", "bundle name, for example the product's firmware")
	fl.StringVar(&version, "version", "", "bundle version, a semantic version such as 1.2.0 or 1.3.0-rc.1")
	fl.StringVar(&path, "path", "", "target path (default NAME/VERSION/<file name>)")
	fl.StringSliceVar(&hardware, "hardware", nil, "hardware the bundle is compatible with (repeatable)")
	fl.StringVar(&notes, "release-notes", "", "release notes")
	fl.StringVar(&notesFile, "release-notes-file", "", "file holding the release notes")
	fl.BoolVar(&downgrade, "allow-downgrade", false, "devices may install this bundle over a newer version")
	fl.BoolVarP(&quiet, "quiet", "q", false, "no progress bar (there is none unless stderr is a terminal)")
	fl.DurationVar(&expiry, "targets-expiry", tuf.DefaultTargetsExpiry, "lifetime of the signed targets metadata")
	fl.StringSliceVar(&deltaFrom, "delta-from", nil, "earlier versions (or target paths) to publish a patch from, comma-separated")
	fl.Float64Var(&deltaRatio, "delta-max-ratio", 0.5, "skip a patch larger than this fraction of the bundle")
	fl.IntVar(&deltaWindow, "delta-window", delta.DefaultWindow, "patch window in bytes: about what a device holds in memory to apply it")
	return cmd
}

// upload streams r to UploadBlob in 256 KiB chunks, counting them into
// bar.
func upload(cmd *cobra.Command, s *session, r io.Reader, length int64, digest string, bar *progressbar.ProgressBar) error {
	stream := s.client.UploadBlob(cmd.Context())
	if err := stream.Send(&repositoryv1.UploadBlobRequest{Message: &repositoryv1.UploadBlobRequest_Info{
		Info: &repositoryv1.BlobInfo{Length: uint64(length), Sha256: digest},
	}}); err != nil {
		_, cerr := stream.CloseAndReceive()
		return errors.Join(err, cerr)
	}
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if serr := stream.Send(&repositoryv1.UploadBlobRequest{Message: &repositoryv1.UploadBlobRequest_Chunk{Chunk: buf[:n]}}); serr != nil {
				_, cerr := stream.CloseAndReceive()
				return errors.Join(serr, cerr)
			}
			_ = bar.Add(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if _, err := stream.CloseAndReceive(); err != nil {
		return err
	}
	return bar.Finish()
}

func newBundleListCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the bundles of the current repository version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := a.repository()
			if err != nil {
				return err
			}
			bundles, _, err := collect(maxPage, 0, func(size uint32, token string) ([]*repositoryv1.Bundle, string, error) {
				page, err := client.ListBundles(cmd.Context(), connect.NewRequest(&repositoryv1.ListBundlesRequest{PageSize: size, PageToken: token}))
				if err != nil {
					return nil, "", err
				}
				return page.Msg.GetBundles(), page.Msg.GetNextPageToken(), nil
			})
			if err != nil {
				return err
			}
			all := &repositoryv1.ListBundlesResponse{Bundles: bundles}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), all)
			}
			return bundleTable(cmd.OutOrStdout(), all.GetBundles())
		},
	}
}

func newBundleShowCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "show TARGET_PATH",
		Short: "Show one bundle and its custom metadata",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := a.repository()
			if err != nil {
				return err
			}
			resp, err := client.GetBundle(cmd.Context(), connect.NewRequest(&repositoryv1.GetBundleRequest{TargetPath: args[0]}))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.Msg)
			}
			b := resp.Msg.GetBundle()
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "path\t%s\nname\t%s\nversion\t%s\nlength\t%d\nsha256\t%s\nhardware\t%v\ndowngrade allowed\t%v\nrole\t%s\npublished\t%s\n",
				b.GetTargetPath(), b.GetName(), b.GetVersion(), b.GetLength(), b.GetHashes()["sha256"], b.GetHardware(),
				b.GetDowngradeAllowed(), b.GetRole(), b.GetPublishTime().AsTime().Format(time.RFC3339))
			if b.GetReleaseNotes() != "" {
				fmt.Fprintf(w, "release notes\t%s\n", b.GetReleaseNotes())
			}
			return w.Flush()
		},
	}
}

func newBundleRemoveCmd(a *app, opts *repoOpts) *cobra.Command {
	var expiry time.Duration
	cmd := &cobra.Command{
		Use:   "remove TARGET_PATH",
		Short: "Remove a bundle from the current targets (signed with the offline keys)",
		Long: `remove signs the next version of the role that holds TARGET_PATH without
it. Devices stop finding it; the blob stays in storage, so devices that
already downloaded it are unaffected.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := openSession(a, opts, true)
			if err != nil {
				return err
			}
			role, md, err := s.roleFor(args[0])
			if err != nil {
				return err
			}
			if _, ok := md.Signed.Targets[args[0]]; !ok {
				return fmt.Errorf("no bundle %s in the repository", args[0])
			}
			delete(md.Signed.Targets, args[0])
			resp, err := s.publishRole(cmd, role, md, expiry)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s: %s v%d, snapshot v%d\n", args[0], role, md.Signed.Version, resp.GetSnapshotVersion())
			return nil
		},
	}
	cmd.Flags().DurationVar(&expiry, "targets-expiry", tuf.DefaultTargetsExpiry, "lifetime of the signed targets metadata")
	return cmd
}

func bundleTable(w io.Writer, bundles []*repositoryv1.Bundle) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tNAME\tVERSION\tLENGTH\tSHA256\tPUBLISHED")
	for _, b := range bundles {
		sum := b.GetHashes()["sha256"]
		if len(sum) > 12 {
			sum = sum[:12]
		}
		published := "-"
		if b.GetPublishTime() != nil {
			published = b.GetPublishTime().AsTime().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", b.GetTargetPath(), b.GetName(), b.GetVersion(), b.GetLength(), sum, published)
	}
	return tw.Flush()
}

func newBundleFetchCmd(a *app, opts *repoOpts) *cobra.Command {
	var out string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "fetch TARGET_PATH",
		Short: "Download a bundle and verify it as a device does (go-tuf's updater)",
		Long: `fetch refreshes the repository's metadata from <repo-dir>/root.json with
go-tuf's updater (signatures, thresholds, versions, expiry), downloads the
bundle, checks its length and hashes, and writes it to --output (default:
the file name of TARGET_PATH). While it downloads, a progress bar with the
rate and the time left is drawn on stderr when it is a terminal (nothing
otherwise).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := openSession(a, opts, false)
			if err != nil {
				return err
			}
			tf, err := s.u.GetTargetInfo(args[0])
			if err != nil {
				return err
			}
			if out == "" {
				out = filepath.Base(args[0])
			}
			bar := newProgress(cmd, quiet).transfer("fetch "+args[0], tf.Length)
			s.hc.watch(bar)
			_, _, err = s.u.DownloadTarget(tf, out, "")
			s.hc.watch(nil)
			if err != nil {
				_ = bar.Exit()
				return err
			}
			_ = bar.Finish()
			fmt.Fprintf(cmd.OutOrStdout(), "verified %s (%d bytes, sha256 %s) -> %s\n", args[0], tf.Length, hex.EncodeToString(tf.Hashes["sha256"]), out)
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "O", "", "file to write")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress bar (there is none unless stderr is a terminal)")
	return cmd
}
