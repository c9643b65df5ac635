package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/spf13/cobra"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
	"golang.org/x/term"

	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/proto/ferry/repository/v1/repositoryv1connect"
	"github.com/ferryhq/ferry/tuf"
)

// repoOpts locate the release engineer's repository directory: the
// trusted root.json, the encrypted offline keys under keys/, and the
// verified metadata cache under cache/.
type repoOpts struct {
	dir      string
	passFile string
}

func (r *repoOpts) bind(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&r.dir, "repo-dir", envOr("FERRY_REPO_DIR", "ferry-repo"), "directory of the trusted root and the offline keys [$FERRY_REPO_DIR]")
	f.StringVar(&r.passFile, "passphrase-file", os.Getenv("FERRY_PASSPHRASE_FILE"), "file holding the offline keys' passphrase (else $FERRY_PASSPHRASE, else a prompt) [$FERRY_PASSPHRASE_FILE]")
}

// passphrase returns the offline keys' passphrase.
func (r *repoOpts) passphrase(confirm bool) ([]byte, error) {
	if p := os.Getenv("FERRY_PASSPHRASE"); p != "" {
		return []byte(p), nil
	}
	if r.passFile != "" {
		raw, err := os.ReadFile(r.passFile)
		if err != nil {
			return nil, fmt.Errorf("passphrase file: %w", err)
		}
		return []byte(strings.TrimRight(string(raw), "\r\n")), nil
	}
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return nil, errors.New("no passphrase for the offline keys: give --passphrase-file or FERRY_PASSPHRASE")
	}
	fmt.Fprint(os.Stderr, "Passphrase of the offline keys: ")
	p, err := term.ReadPassword(fd)
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return nil, err
	}
	if confirm {
		fmt.Fprint(os.Stderr, "Again: ")
		again, err := term.ReadPassword(fd)
		fmt.Fprintln(os.Stderr)
		if err != nil {
			return nil, err
		}
		if string(again) != string(p) {
			return nil, errors.New("the passphrases differ")
		}
	}
	return p, nil
}

// keyRing returns the offline key ring. The passphrase is asked the first
// time a PEM key is created or read (a ring of KMS keys never asks), and
// once only.
func (r *repoOpts) keyRing(confirm bool) tuf.KeyRing {
	var pass []byte
	return tuf.KeyRing{Dir: filepath.Join(r.dir, "keys"), PassphraseFunc: func() ([]byte, error) {
		if pass != nil {
			return pass, nil
		}
		p, err := r.passphrase(confirm)
		if err != nil {
			return nil, err
		}
		pass = p
		return p, nil
	}}
}

func (r *repoOpts) rootFile() string { return filepath.Join(r.dir, "root.json") }

// repository returns a RepositoryService client.
func (a *app) repository() (repositoryv1connect.RepositoryServiceClient, error) {
	return newClient(a, repositoryv1connect.NewRepositoryServiceClient)
}

// tufHTTPClient returns an HTTP client for the repository's metadata and
// targets, sending the operator's API key.
func (a *app) tufHTTPClient() (*http.Client, error) {
	hc, err := a.httpClient()
	if err != nil {
		return nil, err
	}
	key, err := a.apiKey()
	if err != nil {
		return nil, err
	}
	hc.Transport = bearerTransport{key: key, next: hc.Transport}
	return hc, nil
}

type bearerTransport struct {
	key  string
	next http.RoundTripper
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return b.next.RoundTrip(r)
}

func newRepoCmd(a *app) *cobra.Command {
	opts := &repoOpts{}
	cmd := &cobra.Command{Use: "repo", Short: "Create the TUF repository and manage its offline keys"}
	opts.bind(cmd)
	cmd.AddCommand(newRepoInitCmd(a, opts), newRepoRotateKeyCmd(a, opts), newRepoDelegateCmd(a, opts), newRepoStatusCmd(a))
	return cmd
}

func newRepoInitCmd(a *app, opts *repoOpts) *cobra.Command {
	var rootKeys, rootThreshold, targetsKeys, targetsThreshold, bins int
	var rootKMS, targetsKMS []string
	var rootExpiry, targetsExpiry time.Duration
	var quiet bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create offline root and targets keys, sign the first root and targets, and publish them",
		Long: `init creates the repository: root and targets keys (encrypted with a
passphrase, in <repo-dir>/keys), a root naming them and ferryd's online
snapshot and timestamp keys, and the first (empty) targets. With
--hash-bins N, targets are spread over N hash bins signed by a bins key.
With --root-kms or --targets-kms (repeatable), that role's keys are the
given KMS keys instead ("awskms:///…", "gcpkms://…", "azurekms://…",
"hashivault://…", or "<scheme>://…" served by a sigstore-kms-<scheme>
plugin on PATH); only the reference is kept in <repo-dir>/keys.
Keep <repo-dir> offline and backed up; <repo-dir>/root.json is the trusted
root to ship with devices. While it signs the hash bins and publishes, a
progress bar or spinner is drawn on stderr when it is a terminal, and one
line per step otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := os.Stat(opts.rootFile()); err == nil {
				return fmt.Errorf("%s exists: this directory already holds a repository", opts.rootFile())
			}
			prog := newProgress(cmd, quiet)
			bits := 0
			if bins > 0 {
				for 1<<bits < bins {
					bits++
				}
				if 1<<bits != bins || bits > 16 {
					return fmt.Errorf("--hash-bins %d: want a power of two up to 65536", bins)
				}
			}
			client, err := a.repository()
			if err != nil {
				return err
			}
			online, err := onlineKeys(cmd, client)
			if err != nil {
				return err
			}
			ring := opts.keyRing(true)
			rootSigners, err := offlineKeys(cmd.Context(), ring, metadata.ROOT, rootKeys, rootKMS)
			if err != nil {
				return err
			}
			targetSigners, err := offlineKeys(cmd.Context(), ring, metadata.TARGETS, targetsKeys, targetsKMS)
			if err != nil {
				return err
			}
			rootKeys, targetsKeys = len(rootSigners), len(targetSigners)
			rk, err := roleKeys(rootSigners, rootThreshold)
			if err != nil {
				return err
			}
			tk, err := roleKeys(targetSigners, targetsThreshold)
			if err != nil {
				return err
			}
			now := time.Now()
			root, err := tuf.NewRoot(tuf.RootParams{
				Version: 1, Expires: now.Add(rootExpiry), Root: rk, Targets: tk,
				Snapshot: online[metadata.SNAPSHOT], Timestamp: online[metadata.TIMESTAMP],
			})
			if err != nil {
				return err
			}
			if err := tuf.Sign(root, rootSigners...); err != nil {
				return err
			}
			rootJSON, err := root.ToBytes(true)
			if err != nil {
				return err
			}
			top := tuf.NewTargets(1, now.Add(targetsExpiry))
			batch := []*repositoryv1.RoleMetadata{}
			if bits > 0 {
				binSigners, err := ring.CreateN("bins", 1)
				if err != nil {
					return err
				}
				bk, _ := roleKeys(binSigners, 1)
				if err := tuf.DelegateHashBins(top, "bins", bits, bk); err != nil {
					return err
				}
				bar := prog.steps(fmt.Sprintf("signing %d hash bins", bins), bins)
				for _, name := range tuf.DelegatedRoles(top) {
					bin := tuf.NewTargets(1, now.Add(targetsExpiry))
					raw, err := signTargets(bin, binSigners)
					if err != nil {
						_ = bar.Exit()
						return err
					}
					batch = append(batch, &repositoryv1.RoleMetadata{Role: name, Metadata: raw})
					_ = bar.Add(1)
				}
				_ = bar.Finish()
			}
			topJSON, err := signTargets(top, targetSigners)
			if err != nil {
				return err
			}
			done := prog.phase("publishing root")
			_, err = client.PublishRoot(cmd.Context(), connect.NewRequest(&repositoryv1.PublishRootRequest{Metadata: rootJSON}))
			done()
			if err != nil {
				return fmt.Errorf("publish root: %w", err)
			}
			if err := os.WriteFile(opts.rootFile(), rootJSON, 0o644); err != nil {
				return err
			}
			what := "publishing targets"
			if bits > 0 {
				what = fmt.Sprintf("publishing targets and %d hash bins", bins)
			}
			done = prog.phase(what)
			resp, err := client.PublishTargets(cmd.Context(), connect.NewRequest(&repositoryv1.PublishTargetsRequest{
				Role: metadata.TARGETS, Metadata: topJSON, AdditionalRoles: batch,
			}))
			done()
			if err != nil {
				return fmt.Errorf("publish targets: %w", err)
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.Msg)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "repository initialized: root v1 (%d-of-%d keys), targets v1 (%d-of-%d keys)", rootThreshold, rootKeys, targetsThreshold, targetsKeys)
			if bits > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), ", %d hash bins", bins)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "\ntrusted root: %s (ship it with your devices)\noffline keys: %s (keep them offline and backed up)\n",
				opts.rootFile(), filepath.Join(opts.dir, "keys"))
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&rootKeys, "root-keys", 1, "number of root keys to create")
	f.IntVar(&rootThreshold, "root-threshold", 1, "root signatures required")
	f.IntVar(&targetsKeys, "targets-keys", 1, "number of targets keys to create")
	f.IntVar(&targetsThreshold, "targets-threshold", 1, "targets signatures required")
	f.StringArrayVar(&rootKMS, "root-kms", nil, "KMS key reference to use as a root key instead of creating keys (repeatable)")
	f.StringArrayVar(&targetsKMS, "targets-kms", nil, "KMS key reference to use as a targets key instead of creating keys (repeatable)")
	f.IntVar(&bins, "hash-bins", 0, "delegate targets to this many hash bins (a power of two; 0: none)")
	f.DurationVar(&rootExpiry, "root-expiry", tuf.DefaultRootExpiry, "lifetime of the root")
	f.DurationVar(&targetsExpiry, "targets-expiry", tuf.DefaultTargetsExpiry, "lifetime of targets metadata")
	f.BoolVarP(&quiet, "quiet", "q", false, "say nothing about the steps while they run")
	return cmd
}

// offlineKeys adds the KMS keys refs to role, or when there are none
// creates n passphrase-encrypted keys.
func offlineKeys(ctx context.Context, ring tuf.KeyRing, role string, n int, refs []string) ([]signature.Signer, error) {
	if len(refs) > 0 {
		return ring.AddKMSN(ctx, role, refs)
	}
	return ring.CreateN(role, n)
}

func onlineKeys(cmd *cobra.Command, client repositoryv1connect.RepositoryServiceClient) (map[string]*metadata.Key, error) {
	resp, err := client.GetOnlineKeys(cmd.Context(), connect.NewRequest(&repositoryv1.GetOnlineKeysRequest{}))
	if err != nil {
		return nil, fmt.Errorf("online keys: %w", err)
	}
	keys := map[string]*metadata.Key{}
	for _, k := range resp.Msg.GetKeys() {
		key := &metadata.Key{Type: k.GetKeyType(), Scheme: k.GetScheme(), Value: metadata.KeyVal{PublicKey: k.GetPublicKey()}}
		if tuf.KeyID(key) != k.GetKeyId() {
			return nil, fmt.Errorf("online %s key: its id does not match the key", k.GetRole())
		}
		keys[k.GetRole()] = key
	}
	if keys[metadata.SNAPSHOT] == nil || keys[metadata.TIMESTAMP] == nil {
		return nil, errors.New("ferryd did not return its snapshot and timestamp keys")
	}
	return keys, nil
}

func roleKeys(signers []signature.Signer, threshold int) (tuf.RoleKeys, error) {
	rk := tuf.RoleKeys{Threshold: threshold}
	for _, s := range signers {
		k, err := tuf.PublicKey(s)
		if err != nil {
			return rk, err
		}
		rk.Keys = append(rk.Keys, k)
	}
	return rk, nil
}

func signTargets(md *metadata.Metadata[metadata.TargetsType], signers []signature.Signer) ([]byte, error) {
	md.Signatures = nil
	if err := tuf.Sign(md, signers...); err != nil {
		return nil, err
	}
	return md.ToBytes(false)
}

// session is a verified view of the remote repository: go-tuf's updater,
// trusting <repo-dir>/root.json, over the operator's credential.
type session struct {
	a      *app
	opts   *repoOpts
	client repositoryv1connect.RepositoryServiceClient
	u      *updater.Updater
	ring   tuf.KeyRing
	// hc is the HTTP client of u; it shows target downloads in a bar.
	hc *progressClient
}

func openSession(a *app, opts *repoOpts, needKeys bool) (*session, error) {
	rootJSON, err := os.ReadFile(opts.rootFile())
	if err != nil {
		return nil, fmt.Errorf("trusted root: %w (run ferryctl repo init, or give --repo-dir)", err)
	}
	client, err := a.repository()
	if err != nil {
		return nil, err
	}
	hc, err := a.tufHTTPClient()
	if err != nil {
		return nil, err
	}
	base := strings.TrimSuffix(a.server, "/") + "/tuf"
	cfg, err := config.New(base+"/metadata", rootJSON)
	if err != nil {
		return nil, err
	}
	cfg.RemoteTargetsURL = base + "/targets"
	cfg.LocalMetadataDir = filepath.Join(opts.dir, "cache")
	cfg.LocalTargetsDir = filepath.Join(opts.dir, "cache", "targets")
	targets, err := url.Parse(cfg.RemoteTargetsURL + "/")
	if err != nil {
		return nil, fmt.Errorf("--server: %w", err)
	}
	pc := &progressClient{next: hc, targets: targets.Path}
	f := fetcher.NewDefaultFetcher()
	f.SetHTTPClient(pc)
	cfg.Fetcher = f
	if err := cfg.EnsurePathsExist(); err != nil {
		return nil, err
	}
	u, err := updater.New(cfg)
	if err != nil {
		return nil, err
	}
	if err := u.Refresh(); err != nil {
		return nil, fmt.Errorf("verify the repository: %w", err)
	}
	s := &session{a: a, opts: opts, client: client, u: u, hc: pc}
	if needKeys {
		s.ring = opts.keyRing(false)
	}
	return s, nil
}

func (s *session) root() *metadata.Metadata[metadata.RootType] {
	return s.u.GetTrustedMetadataSet().Root
}

func (s *session) top() *metadata.Metadata[metadata.TargetsType] {
	return s.u.GetTrustedMetadataSet().Targets[metadata.TARGETS]
}

// roleFor returns the role that holds path and its current verified
// metadata.
func (s *session) roleFor(path string) (string, *metadata.Metadata[metadata.TargetsType], error) {
	role := tuf.RoleFor(s.top(), path)
	if role != metadata.TARGETS {
		// Loads (and verifies) the delegated role on the way.
		_, _ = s.u.GetTargetInfo(path)
	}
	md := s.u.GetTrustedMetadataSet().Targets[role]
	if md == nil {
		return "", nil, fmt.Errorf("role %s could not be loaded from the repository", role)
	}
	return role, md, nil
}

// signers returns the offline signers of a targets role.
func (s *session) signers(ctx context.Context, role string) ([]signature.Signer, error) {
	if role == metadata.TARGETS {
		return s.ring.RoleSigners(ctx, s.root(), metadata.TARGETS)
	}
	d := s.top().Signed.Delegations
	if d == nil {
		return nil, fmt.Errorf("role %s is not delegated", role)
	}
	if d.SuccinctRoles != nil {
		return threshold(ctx, s.ring, d.SuccinctRoles.NamePrefix, d.SuccinctRoles.KeyIDs, d.SuccinctRoles.Threshold)
	}
	for _, r := range d.Roles {
		if r.Name == role {
			return threshold(ctx, s.ring, role, r.KeyIDs, r.Threshold)
		}
	}
	return nil, fmt.Errorf("role %s is not delegated", role)
}

func threshold(ctx context.Context, ring tuf.KeyRing, name string, ids []string, n int) ([]signature.Signer, error) {
	got, err := ring.Signers(ctx, name, ids)
	if err != nil {
		return nil, err
	}
	if len(got) < n {
		return nil, fmt.Errorf("%s: %d of the %d keys needed are in %s", name, len(got), n, ring.Dir)
	}
	return got, nil
}

// publishRole signs the next version of role's metadata, changed by edit,
// and submits it with more (already signed) roles.
func (s *session) publishRole(cmd *cobra.Command, role string, md *metadata.Metadata[metadata.TargetsType], expiry time.Duration, more ...*repositoryv1.RoleMetadata) (*repositoryv1.PublishTargetsResponse, error) {
	signers, err := s.signers(cmd.Context(), role)
	if err != nil {
		return nil, err
	}
	md.Signed.Version++
	md.Signed.Expires = time.Now().Add(expiry).UTC().Truncate(time.Second)
	raw, err := signTargets(md, signers)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.PublishTargets(cmd.Context(), connect.NewRequest(&repositoryv1.PublishTargetsRequest{Role: role, Metadata: raw, AdditionalRoles: more}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// saveRoot makes root the trusted root of the repository directory.
func (s *session) saveRoot(root *metadata.Metadata[metadata.RootType]) error {
	raw, err := root.ToBytes(true)
	if err != nil {
		return err
	}
	return os.WriteFile(s.opts.rootFile(), raw, 0o644)
}

func newRepoRotateKeyCmd(a *app, opts *repoOpts) *cobra.Command {
	var keys, thresholdN int
	var kmsRefs []string
	var expiry, targetsExpiry time.Duration
	cmd := &cobra.Command{
		Use:   "rotate-key ROLE",
		Short: "Replace a role's keys and publish the next root",
		Long: `rotate-key creates new keys for ROLE (root or targets) and publishes the
next root, signed by a threshold of the current root keys and of the new
ones, so that devices that trust the current root follow the rotation.
Rotating targets also re-signs the current targets with the new keys.
With --kms (repeatable) the new keys are those KMS keys instead of new
passphrase-encrypted ones. The replaced key files (and KMS references)
move to <repo-dir>/keys/retired.

For snapshot or timestamp (ferryd's online keys), first restart ferryd
without the old key file (<data-dir>/tuf-keys/ROLE.pem) so that it makes a
new one; rotate-key then publishes a root naming it. Devices drop what the
old key signed, which also undoes a fast-forward attack made with it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			role := args[0]
			online := role == metadata.SNAPSHOT || role == metadata.TIMESTAMP
			n := keys
			if role != metadata.ROOT && role != metadata.TARGETS && !online {
				return fmt.Errorf("role %q: want root, targets, snapshot or timestamp", role)
			}
			s, err := openSession(a, opts, true)
			if err != nil {
				return err
			}
			cur := s.root()
			if len(kmsRefs) > 0 && online {
				return fmt.Errorf("--kms: %s is one of ferryd's online keys", role)
			}
			oldRoot, err := s.ring.RoleSigners(cmd.Context(), cur, metadata.ROOT)
			if err != nil {
				return err
			}
			var fresh []signature.Signer
			var rk tuf.RoleKeys
			if online {
				// ferryd made the new key (restarted without the old one).
				ok, err := onlineKeys(cmd, s.client)
				if err != nil {
					return err
				}
				rk = tuf.RoleKeys{Keys: []*metadata.Key{ok[role]}, Threshold: 1}
			} else {
				if fresh, err = offlineKeys(cmd.Context(), s.ring, role, n, kmsRefs); err != nil {
					return err
				}
				n = len(fresh)
				if rk, err = roleKeys(fresh, thresholdN); err != nil {
					return err
				}
			}
			next, err := tuf.NextRoot(cur, role, rk, time.Now().Add(expiry))
			if err != nil {
				return err
			}
			signers := oldRoot
			if role == metadata.ROOT {
				signers = append(signers, fresh...)
			}
			if err := tuf.Sign(next, signers...); err != nil {
				return err
			}
			raw, err := next.ToBytes(true)
			if err != nil {
				return err
			}
			if _, err := s.client.PublishRoot(cmd.Context(), connect.NewRequest(&repositoryv1.PublishRootRequest{Metadata: raw})); err != nil {
				return fmt.Errorf("publish root: %w", err)
			}
			if err := s.saveRoot(next); err != nil {
				return err
			}
			if online {
				fmt.Fprintf(cmd.OutOrStdout(), "root v%d published: %s is ferryd's key %s\n", next.Signed.Version, role, tuf.KeyID(rk.Keys[0]))
				return nil
			}
			ids := make([]string, len(rk.Keys))
			for i, k := range rk.Keys {
				ids[i] = tuf.KeyID(k)
			}
			if err := s.ring.Retire(role, ids); err != nil {
				return fmt.Errorf("retire old keys: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "root v%d published: %s is now %d-of-%d new keys\n", next.Signed.Version, role, thresholdN, n)
			if role == metadata.TARGETS {
				// The current targets (verified above) are signed by the
				// old keys, which the new root no longer trusts: re-sign.
				top := s.top()
				top.Signed.Version++
				top.Signed.Expires = time.Now().Add(targetsExpiry).UTC().Truncate(time.Second)
				raw, err := signTargets(top, fresh)
				if err != nil {
					return err
				}
				resp, err := s.client.PublishTargets(cmd.Context(), connect.NewRequest(&repositoryv1.PublishTargetsRequest{Role: metadata.TARGETS, Metadata: raw}))
				if err != nil {
					return fmt.Errorf("re-sign targets: %w", err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "targets v%d re-signed with the new keys\n", resp.Msg.GetTargetsVersion())
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&keys, "keys", 1, "number of new keys")
	f.IntVar(&thresholdN, "threshold", 1, "signatures required from the new keys")
	f.StringArrayVar(&kmsRefs, "kms", nil, "KMS key reference to use as a new key instead of creating one (repeatable)")
	f.DurationVar(&expiry, "root-expiry", tuf.DefaultRootExpiry, "lifetime of the new root")
	f.DurationVar(&targetsExpiry, "targets-expiry", tuf.DefaultTargetsExpiry, "lifetime of re-signed targets")
	return cmd
}

func newRepoDelegateCmd(a *app, opts *repoOpts) *cobra.Command {
	var paths []string
	var keys, thresholdN int
	var expiry time.Duration
	cmd := &cobra.Command{
		Use:   "delegate ROLE --path PATTERN...",
		Short: "Delegate target paths to a role with keys of its own (one per product line)",
		Long: `delegate creates keys for ROLE and makes the targets role delegate the
target paths matching each --path pattern (shell-style per segment,
"camera/*/*") to it. Bundles published at those paths are then signed
with ROLE's keys, not the targets keys.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			role := args[0]
			if len(paths) == 0 {
				return errors.New("give at least one --path")
			}
			s, err := openSession(a, opts, true)
			if err != nil {
				return err
			}
			fresh, err := s.ring.CreateN(role, keys)
			if err != nil {
				return err
			}
			rk, err := roleKeys(fresh, thresholdN)
			if err != nil {
				return err
			}
			top := s.top()
			if err := tuf.DelegateRole(top, role, paths, rk); err != nil {
				return err
			}
			first := tuf.NewTargets(1, time.Now().Add(expiry))
			if existing := s.u.GetTrustedMetadataSet().Targets[role]; existing != nil {
				first.Signed.Version = existing.Signed.Version + 1
			}
			raw, err := signTargets(first, fresh)
			if err != nil {
				return err
			}
			resp, err := s.publishRole(cmd, metadata.TARGETS, top, expiry, &repositoryv1.RoleMetadata{Role: role, Metadata: raw})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "targets v%d delegates %s to %s (%d-of-%d keys)\n", resp.GetTargetsVersion(), strings.Join(paths, ", "), role, thresholdN, keys)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&paths, "path", nil, "target path pattern delegated to the role (repeatable)")
	f.IntVar(&keys, "keys", 1, "number of keys of the role")
	f.IntVar(&thresholdN, "threshold", 1, "signatures required")
	f.DurationVar(&expiry, "targets-expiry", tuf.DefaultTargetsExpiry, "lifetime of the targets metadata")
	return cmd
}
