package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// The config file: --config, else $FERRY_CONFIG, else
// <user config dir>/ferry/ferryctl.yaml.
const (
	configEnv      = "FERRY_CONFIG"
	configDirName  = "ferry"
	configFileName = "ferryctl.yaml"
)

// source is where a setting's value came from, weakest first.
type source int

const (
	fromDefault source = iota
	fromFile
	fromEnv
	fromFlag
)

func (s source) String() string {
	switch s {
	case fromFile:
		return "file"
	case fromEnv:
		return "env"
	case fromFlag:
		return "flag"
	}
	return "default"
}

// setting is one connection setting: its flag (also its key in the config
// file), its environment variable, and its built-in default.
type setting struct {
	name  string
	env   string // "" when the setting has no variable
	field func(a *app) *string
	// def returns the built-in default and, when it is not obvious, what
	// it is.
	def func() (value, note string)
	// path: a relative value in the config file is relative to the
	// file's directory.
	path   bool
	secret bool
}

var settings = []setting{
	{name: "server", env: "FERRY_SERVER", field: func(a *app) *string { return &a.server },
		def: func() (string, string) { return defaultServer, "" }},
	{name: "token", env: "FERRY_TOKEN", field: func(a *app) *string { return &a.token }, secret: true,
		def: func() (string, string) { return "", "" }},
	{name: "token-file", env: "FERRY_TOKEN_FILE", field: func(a *app) *string { return &a.tokenFile }, path: true,
		def: func() (string, string) { return devDefault("operator.token") }},
	{name: "ca-file", env: "FERRY_CA_FILE", field: func(a *app) *string { return &a.caFile }, path: true,
		def: func() (string, string) { return devDefault("ca.pem") }},
	{name: "output", field: func(a *app) *string { return &a.output },
		def: func() (string, string) { return "table", "" }},
}

// devDefault is the default of a credential file: the development PKI's,
// when ferryd runs with its defaults in the current directory.
func devDefault(name string) (string, string) {
	if p := devFile(name); p != "" {
		return p, "development PKI"
	}
	return "", ""
}

// fileConfig is the config file's content. Every key is optional.
type fileConfig struct {
	Server    *string `yaml:"server"`
	Token     *string `yaml:"token"`
	TokenFile *string `yaml:"token-file"`
	CAFile    *string `yaml:"ca-file"`
	Output    *string `yaml:"output"`
}

// get returns the file's value of a setting, if it has one.
func (c *fileConfig) get(name string) (string, bool) {
	if c == nil {
		return "", false
	}
	var p *string
	switch name {
	case "server":
		p = c.Server
	case "token":
		p = c.Token
	case "token-file":
		p = c.TokenFile
	case "ca-file":
		p = c.CAFile
	case "output":
		p = c.Output
	}
	if p == nil {
		return "", false
	}
	return *p, true
}

// configPath returns the config file to read, and whether it was asked
// for (then it must exist). It is "" when there is none.
func (a *app) configPath() (string, bool) {
	if f := a.flags.Lookup("config"); f != nil && f.Changed {
		return a.configFile, true
	}
	if p, ok := os.LookupEnv(configEnv); ok {
		return p, true
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", false // no home: no default file
	}
	return filepath.Join(dir, configDirName, configFileName), false
}

// unknownField rewrites yaml's message for a key the file must not have.
var unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)

// loadConfig reads a config file. A missing file that was not asked for
// is no config; one that was asked for is an error.
func loadConfig(path string, explicit bool) (*fileConfig, error) {
	if path == "" {
		return nil, nil
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	cfg := &fileConfig{}
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			msgs := make([]string, len(te.Errors))
			for i, m := range te.Errors {
				m = unknownField.ReplaceAllString(m, `unknown key $1 (known: `+knownKeys()+`)`)
				msgs[i] = strings.ReplaceAll(m, "main.fileConfig", "a mapping of settings")
			}
			return nil, fmt.Errorf("config file %s: %s", path, strings.Join(msgs, "; "))
		}
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	var more any
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config file %s: want one YAML document", path)
	}
	// Relative paths are relative to the file, so it works from anywhere.
	for _, p := range []*string{cfg.TokenFile, cfg.CAFile} {
		if p != nil && *p != "" {
			*p = filePath(*p, filepath.Dir(path))
		}
	}
	return cfg, nil
}

// filePath resolves a path given in the config file: "~/" is the home
// directory, and a relative path is relative to dir.
func filePath(p, dir string) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, rest)
		}
	}
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

func knownKeys() string {
	names := make([]string, len(settings))
	for i, s := range settings {
		names[i] = s.name
	}
	return strings.Join(names, ", ")
}

// resolve sets every setting from, strongest first, its flag, its
// environment variable, the config file, or its built-in default, and
// records where each came from. It may run more than once (completion
// runs it after the flags are parsed).
func (a *app) resolve() error {
	path, explicit := a.configPath()
	cfg, err := loadConfig(path, explicit)
	if err != nil {
		return err
	}
	a.configUsed, a.configExplicit, a.configFound = path, explicit, cfg != nil
	a.sources = make(map[string]source, len(settings))
	a.notes = make(map[string]string, len(settings))
	for _, s := range settings {
		p := s.field(a)
		if f := a.flags.Lookup(s.name); f != nil && f.Changed {
			a.sources[s.name] = fromFlag
			continue
		}
		if s.env != "" {
			if v, ok := os.LookupEnv(s.env); ok {
				*p, a.sources[s.name] = v, fromEnv
				continue
			}
		}
		if v, ok := cfg.get(s.name); ok {
			*p, a.sources[s.name] = v, fromFile
			continue
		}
		*p, a.notes[s.name] = s.def()
		a.sources[s.name] = fromDefault
	}
	if a.output != "table" && a.output != "json" {
		return fmt.Errorf("output %q (from %s): want table or json", a.output, a.describe("output"))
	}
	return nil
}

// describe says where a setting came from: "flag --server",
// "env FERRY_SERVER", "file", "default".
func (a *app) describe(name string) string {
	src := a.sources[name]
	switch src {
	case fromFlag:
		return "flag --" + name
	case fromEnv:
		for _, s := range settings {
			if s.name == name {
				return "env " + s.env
			}
		}
	case fromFile:
		return "file " + a.configUsed
	case fromDefault:
		if n := a.notes[name]; n != "" {
			return "default (" + n + ")"
		}
	}
	return src.String()
}

// credential says which of token and token-file gives the operator API
// key: the one from the stronger source (token when both come from the
// same), or the other when that one is empty. "" when neither is set.
func (a *app) credential() string {
	tok, file := a.sources["token"], a.sources["token-file"]
	first, second := "token", "token-file"
	if file > tok {
		first, second = second, first
	}
	for _, name := range []string{first, second} {
		if *a.setting(name) != "" {
			return name
		}
	}
	return ""
}

func (a *app) setting(name string) *string {
	for _, s := range settings {
		if s.name == name {
			return s.field(a)
		}
	}
	panic("no setting " + name)
}

// skipResolve tells the commands that do not talk to ferryd and must work
// whatever the config file says: shell completion scripts, the hidden
// completion requests (they resolve once their flags are parsed), help.
func skipResolve(cmd *cobra.Command) bool {
	top := cmd
	for top.HasParent() && top.Parent().HasParent() {
		top = top.Parent()
	}
	switch top.Name() {
	case "completion", "help", cobra.ShellCompRequestCmd, cobra.ShellCompNoDescRequestCmd:
		return top != cmd.Root()
	}
	return false
}

func newConfigCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show ferryctl's settings and where they come from",
		Long: `ferryctl's connection settings (server, token, token-file, ca-file, output)
come from, strongest first: flags, environment variables (FERRY_SERVER,
FERRY_TOKEN, FERRY_TOKEN_FILE, FERRY_CA_FILE), the config file, and the
built-in defaults (the development credentials in ./ferry-data/pki when
they exist).

The config file is --config PATH, else $FERRY_CONFIG, else
ferry/ferryctl.yaml in the user's config directory ($XDG_CONFIG_HOME,
usually ~/.config). It is YAML with any of these keys:

  server: https://ferry.example.com:8443
  token-file: operator.token   # relative to the file's directory; ~/ works
  ca-file: ca.pem
  output: table                # or json

The default file may be missing; a file given with --config or
$FERRY_CONFIG must exist, and an unknown key is an error.`,
	}
	cmd.AddCommand(newConfigViewCmd(a))
	return cmd
}

// configView is config view's JSON output.
type configView struct {
	ConfigFile string        `json:"configFile"`
	Found      bool          `json:"configFileFound"`
	Settings   []viewSetting `json:"settings"`
	Credential string        `json:"credential"`
}

type viewSetting struct {
	Name   string `json:"name"`
	Value  string `json:"value"`
	Source string `json:"source"`
}

func newConfigViewCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "view",
		Short: "Print the effective settings and where each came from (flag, env, file, default); the token is redacted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := configView{ConfigFile: a.configUsed, Found: a.configFound, Credential: a.credential()}
			for _, s := range settings {
				val := *s.field(a)
				if s.secret && val != "" {
					val = "(redacted)"
				}
				v.Settings = append(v.Settings, viewSetting{Name: s.name, Value: val, Source: a.describe(s.name)})
			}
			w := cmd.OutOrStdout()
			if a.output == "json" {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			file := v.ConfigFile
			switch {
			case file == "":
				file = "(none)"
			case !v.Found:
				file += " (not found)"
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "config file: %s\n\n", file)
			fmt.Fprintln(tw, "SETTING\tVALUE\tSOURCE")
			for _, s := range v.Settings {
				val := s.Value
				if val == "" {
					val = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, val, s.Source)
			}
			cred := v.Credential
			if cred == "" {
				cred = "none (give --token, --token-file, FERRY_TOKEN or a config file)"
			}
			fmt.Fprintf(tw, "\noperator credential: %s\n", cred)
			return tw.Flush()
		},
	}
}
