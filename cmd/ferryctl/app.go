package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/net/http2"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ferryhq/ferry/internal/bearer"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
)

// devPKI is where ferryd's development credentials are when it runs with
// its defaults in the current directory.
const devPKI = "ferry-data/pki"

// defaultServer is ferryd's API port when it runs with its defaults.
const defaultServer = "https://localhost:8443"

// app holds the settings shared by every command.
type app struct {
	server    string // base URL of ferryd's API port
	token     string // operator API key
	tokenFile string
	caFile    string // CA that signed ferryd's certificate
	output    string // table or json

	configFile string         // --config
	flags      *pflag.FlagSet // the root's persistent flags
	// What resolve found: the config file, whether it was asked for and
	// read, and where each setting came from (with a note on defaults).
	configUsed     string
	configExplicit bool
	configFound    bool
	sources        map[string]source
	notes          map[string]string
}

// bindFlags registers the shared flags. Their values are final only once
// resolve has run (the root's PersistentPreRunE): a flag that was not
// given takes its environment variable, the config file's value, or the
// built-in default.
func (a *app) bindFlags(root *cobra.Command) {
	f := root.PersistentFlags()
	a.flags = f
	f.StringVar(&a.server, "server", defaultServer, "ferryd API URL [$FERRY_SERVER]")
	f.StringVar(&a.token, "token", "", "operator API key [$FERRY_TOKEN]")
	f.StringVar(&a.tokenFile, "token-file", "", "file holding the operator API key (default: ./"+devPKI+"/operator.token if it exists) [$FERRY_TOKEN_FILE]")
	f.StringVar(&a.caFile, "ca-file", "", "CA certificate of ferryd's TLS certificate (default: ./"+devPKI+"/ca.pem if it exists, else system roots) [$FERRY_CA_FILE]")
	f.StringVarP(&a.output, "output", "o", "table", "output format: table or json")
	f.StringVar(&a.configFile, "config", "", "config file (default: $"+configEnv+", else <user config dir>/"+configDirName+"/"+configFileName+")")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if skipResolve(cmd) {
			return nil
		}
		return a.resolve()
	}
	_ = root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp))
	_ = root.MarkPersistentFlagFilename("config", "yaml", "yml")
}

// envOr returns the environment variable name, or def when it is not set.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// devFile returns the path of a development credential if it exists.
func devFile(name string) string {
	p := filepath.Join(devPKI, name)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// httpClient returns an HTTP/2 client that trusts the configured CA.
func (a *app) httpClient() (*http.Client, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.caFile != "" {
		pem, err := os.ReadFile(a.caFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate", a.caFile)
		}
	}
	return &http.Client{Transport: &http2.Transport{TLSClientConfig: cfg}}, nil
}

// apiKey returns the operator API key from the token or the token file,
// whichever came from the stronger source (see credential).
func (a *app) apiKey() (string, error) {
	switch a.credential() {
	case "token":
		return a.token, nil
	case "token-file":
		raw, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return "", fmt.Errorf("token file: %w", err)
		}
		return strings.TrimSpace(string(raw)), nil
	}
	return "", errors.New("no operator credential: give --token, --token-file, FERRY_TOKEN, or token-file in the config file")
}

// clientOptions returns the Connect options every client uses: the
// operator's credential on each call.
func (a *app) clientOptions() ([]connect.ClientOption, error) {
	key, err := a.apiKey()
	if err != nil {
		return nil, err
	}
	return []connect.ClientOption{bearer.Token(key).Option()}, nil
}

// newClient returns a Connect client of ferryd's API made by mk (one of the
// generated New…Client functions), with the CA and the operator credential.
func newClient[C any](a *app, mk func(connect.HTTPClient, string, ...connect.ClientOption) C) (C, error) {
	var none C
	hc, err := a.httpClient()
	if err != nil {
		return none, err
	}
	opts, err := a.clientOptions()
	if err != nil {
		return none, err
	}
	return mk(hc, a.server, opts...), nil
}

// fleet returns a FleetService client.
func (a *app) fleet() (fleetv1connect.FleetServiceClient, error) {
	return newClient(a, fleetv1connect.NewFleetServiceClient)
}

// printJSON writes a message as indented protobuf JSON, formatted the same
// way every time (protojson's own layout varies on purpose).
func printJSON(w io.Writer, m proto.Message) error {
	raw, err := protojson.Marshal(m)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = out.WriteTo(w)
	return err
}

// maxPage is the largest page ferryd serves.
const maxPage = 1000

// collect follows a list call's pages: fetch gets a page size and a token
// and returns a page and the next token. It stops at the last page, or
// once it has limit items (0: no limit), and returns the items and the
// token of what is left.
func collect[T any](pageSize, limit uint32, fetch func(size uint32, token string) ([]T, string, error)) ([]T, string, error) {
	var out []T
	token := ""
	for {
		size := pageSize
		if limit > 0 {
			size = min(limit-uint32(len(out)), size)
		}
		page, next, err := fetch(size, token)
		if err != nil {
			return nil, "", err
		}
		out, token = append(out, page...), next
		if token == "" || limit > 0 && len(out) >= int(limit) {
			if limit > 0 && len(out) > int(limit) {
				out = out[:limit]
			}
			return out, token, nil
		}
	}
}
