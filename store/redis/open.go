package redis

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Kind is the deployment a Redis URL names.
type Kind string

// The deployments ParseURL knows.
const (
	Server   Kind = "server"   // one server: redis://, rediss://, unix://
	Cluster  Kind = "cluster"  // a Redis Cluster: redis+cluster://, rediss+cluster://
	Sentinel Kind = "sentinel" // a primary found through Sentinel: redis+sentinel://, rediss+sentinel://
)

// Conn is a parsed Redis URL: where Redis is and how to reach it.
//
// The forms are:
//
//	redis://[user:password@]host[:6379][/db][?options]       one server
//	rediss://...                                              the same over TLS
//	unix://[user:password@]/path/redis.sock[?db=N]            one server on a Unix socket
//	redis+cluster://[user:password@]h1[:6379],h2,.../[?options]    Redis Cluster, seed nodes
//	redis+sentinel://[user:password@]s1[:26379],s2,.../master[/db][?options]  Sentinel
//	rediss+cluster://..., rediss+sentinel://...               the same over TLS
//
// user and password are the ACL user of the data nodes (a password alone,
// :password@, is the default user's). The options are go-redis's, in
// snake case (dial_timeout=3s, pool_size=50, ...; see ParseURL,
// ParseClusterURL and ParseFailoverURL in go-redis), and these of Ferry:
//
//	ca_file=/path/ca.pem        verify the servers against these roots (default: the system's)
//	cert_file=..., key_file=... a client certificate, for tls-auth-clients
//	server_name=name            the name the servers' certificates carry
//	                            (default: each node's own host, as announced)
//	skip_verify=true            do not verify the servers (testing only)
//	sentinel_username=..., sentinel_password=...
//	                            the sentinels' own ACL user (redis+sentinel only)
type Conn struct {
	Kind Kind
	// Addrs are the server, the cluster's seed nodes or the sentinels.
	Addrs []string
	// MasterName is the name the sentinels know the primary by.
	MasterName string

	single   *goredis.Options
	cluster  *goredis.ClusterOptions
	failover *goredis.FailoverOptions
}

// Ferry's own options; the rest go to go-redis.
var tlsParams = []string{"ca_file", "cert_file", "key_file", "server_name", "skip_verify"}

// ParseURL parses a Redis URL (see Conn). Its errors never repeat the
// URL's password.
func ParseURL(raw string) (*Conn, error) {
	c, err := parseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	return c, nil
}

func parseURL(raw string) (*Conn, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil, errors.New(`want a URL such as redis://host:6379/0, redis+cluster://h1:6379,h2:6379 or redis+sentinel://s1:26379,s2:26379/mymaster`)
	}
	scheme = strings.ToLower(scheme)
	base, variant, _ := strings.Cut(scheme, "+")
	if base != "redis" && base != "rediss" && base != "unix" || variant != "" && base == "unix" {
		return nil, fmt.Errorf("unknown scheme %q: want redis, rediss, redis+cluster, rediss+cluster, redis+sentinel or rediss+sentinel", scheme)
	}
	secure := base == "rediss"
	// The authority may list several hosts, which net/url does not parse:
	// take it apart here and give net/url the rest with the first host.
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	userinfo, hostlist := "", authority
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		userinfo, hostlist = authority[:at+1], authority[at+1:]
	}
	u, err := url.Parse(base + "://" + userinfo + "placeholder" + tail)
	if err != nil {
		return nil, redact(err)
	}
	if u.Fragment != "" {
		return nil, errors.New("a fragment (#...) means nothing here")
	}
	q := u.Query()
	tlsConf, err := tlsFromQuery(q, secure)
	if err != nil {
		return nil, err
	}
	user, password := "", ""
	if u.User != nil {
		user = u.User.Username()
		password, _ = u.User.Password()
	}

	switch variant {
	case "":
		if base == "unix" {
			if hostlist != "" {
				return nil, errors.New("unix:// takes a socket path, as in unix:///run/redis/redis.sock")
			}
		} else if strings.Contains(hostlist, ",") {
			return nil, fmt.Errorf("%s:// names one server; for several, use %s+cluster:// (Redis Cluster) or %s+sentinel:// (Sentinel)", base, base, base)
		}
		if _, err := hostPorts(hostlist, "6379", base == "unix"); err != nil {
			return nil, err
		}
		u.Host = hostlist
		u.RawQuery = q.Encode()
		opts, err := goredis.ParseURL(u.String())
		if err != nil {
			return nil, redact(err)
		}
		if tlsConf != nil {
			if !q.Has("server_name") {
				tlsConf.ServerName = u.Hostname()
			}
			opts.TLSConfig = tlsConf
		}
		return &Conn{Kind: Server, Addrs: []string{opts.Addr}, single: opts}, nil

	case "cluster":
		addrs, err := hostPorts(hostlist, "6379", false)
		if err != nil {
			return nil, err
		}
		if p := strings.Trim(u.Path, "/"); p != "" && p != "0" {
			return nil, fmt.Errorf("a Redis Cluster has only database 0, not %q", p)
		}
		for _, a := range q["addr"] {
			more, err := hostPorts(a, "6379", false)
			if err != nil {
				return nil, err
			}
			addrs = append(addrs, more...)
		}
		q.Del("addr")
		opts, err := goredis.ParseClusterURL(goredisURL(base, u, "", q))
		if err != nil {
			return nil, redact(err)
		}
		opts.Addrs, opts.Username, opts.Password, opts.TLSConfig = addrs, user, password, tlsConf
		return &Conn{Kind: Cluster, Addrs: addrs, cluster: opts}, nil

	case "sentinel":
		addrs, err := hostPorts(hostlist, "26379", false)
		if err != nil {
			return nil, err
		}
		for _, a := range q["addr"] {
			more, err := hostPorts(a, "26379", false)
			if err != nil {
				return nil, err
			}
			addrs = append(addrs, more...)
		}
		q.Del("addr")
		for _, k := range []string{"username", "password", "master_name", "db"} {
			if q.Has(k) {
				return nil, fmt.Errorf("option %s: give the master name and database in the path (redis+sentinel://s1,s2/mymaster/0) and the user and password before the hosts", k)
			}
		}
		path := strings.Split(strings.Trim(u.Path, "/"), "/")
		if path[0] == "" {
			return nil, errors.New("redis+sentinel:// needs the master name as its path, as in redis+sentinel://s1:26379,s2:26379/mymaster")
		}
		if len(path) > 2 {
			return nil, fmt.Errorf("path %q: want /master or /master/db", u.Path)
		}
		master := path[0]
		db := 0
		if len(path) == 2 {
			if db, err = strconv.Atoi(path[1]); err != nil || db < 0 {
				return nil, fmt.Errorf("database %q is not a number", path[1])
			}
		}
		sUser, sPassword := q.Get("sentinel_username"), q.Get("sentinel_password")
		q.Del("sentinel_username")
		q.Del("sentinel_password")
		opts, err := goredis.ParseFailoverURL(goredisURL(base, u, "/"+strconv.Itoa(db), q))
		if err != nil {
			return nil, redact(err)
		}
		opts.MasterName, opts.SentinelAddrs = master, addrs
		opts.Username, opts.Password = user, password
		opts.SentinelUsername, opts.SentinelPassword = sUser, sPassword
		opts.TLSConfig = tlsConf
		return &Conn{Kind: Sentinel, Addrs: addrs, MasterName: master, failover: opts}, nil
	}
	return nil, fmt.Errorf("unknown scheme %q: want redis+cluster or redis+sentinel", scheme)
}

// goredisURL is u as go-redis's parsers take it: one placeholder host (the
// addresses are set afterwards), no user, the given path and the options
// left for go-redis.
func goredisURL(base string, u *url.URL, path string, q url.Values) string {
	v := url.URL{Scheme: base, Host: "placeholder:1", Path: path, RawQuery: q.Encode()}
	return v.String()
}

// hostPorts splits a comma-separated list of host[:port], adding the
// default port; a unix socket URL has none.
func hostPorts(list, defPort string, unix bool) ([]string, error) {
	if unix {
		return nil, nil
	}
	if list == "" {
		return nil, errors.New("no host")
	}
	var out []string
	for _, h := range strings.Split(list, ",") {
		host, port := h, defPort
		if strings.HasPrefix(h, "[") || strings.Count(h, ":") == 1 {
			var err error
			if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
				host = strings.Trim(h, "[]")
			} else if host, port, err = net.SplitHostPort(h); err != nil {
				return nil, fmt.Errorf("address %q: %w", h, err)
			}
		} else if strings.Contains(h, ":") {
			return nil, fmt.Errorf("address %q: put an IPv6 address in brackets, as in [::1]:6379", h)
		}
		if host == "" {
			return nil, fmt.Errorf("address %q: no host", h)
		}
		if strings.ContainsAny(host, "/?#@[] ") {
			return nil, fmt.Errorf("address %q: not a host name", h)
		}
		if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
			return nil, fmt.Errorf("address %q: bad port", h)
		}
		out = append(out, net.JoinHostPort(host, port))
	}
	return out, nil
}

// tlsFromQuery takes Ferry's TLS options out of q and returns the TLS
// configuration of a rediss URL (nil for redis).
func tlsFromQuery(q url.Values, secure bool) (*tls.Config, error) {
	for _, k := range tlsParams {
		if q.Has(k) && !secure {
			return nil, fmt.Errorf("option %s needs TLS: use a rediss scheme", k)
		}
	}
	if !secure {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: q.Get("server_name")}
	if v := q.Get("skip_verify"); v != "" {
		skip, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("skip_verify=%q: want true or false", v)
		}
		conf.InsecureSkipVerify = skip
	}
	if f := q.Get("ca_file"); f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate", f)
		}
	}
	certFile, keyFile := q.Get("cert_file"), q.Get("key_file")
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("cert_file and key_file go together")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	for _, k := range tlsParams {
		q.Del(k)
	}
	return conf, nil
}

// redact drops the URL net/url quotes in its errors (it holds the
// password).
func redact(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// String says where Redis is, without credentials: the address of one
// server, or the addresses and the kind.
func (c *Conn) String() string {
	where := strings.Join(c.Addrs, ",")
	switch c.Kind {
	case Cluster:
		return where + " (Redis Cluster)"
	case Sentinel:
		return where + " (Sentinel, master " + c.MasterName + ")"
	}
	if c.single != nil && c.single.Network == "unix" {
		return c.single.Addr
	}
	return where
}

// Client returns a new client for c.
func (c *Conn) Client() goredis.UniversalClient { return c.client(false, 0) }

// client returns a client; once dials once and never retries, for at most
// dial (when positive), so that the cause of a failure is what is seen.
func (c *Conn) client(once bool, dial time.Duration) goredis.UniversalClient {
	switch c.Kind {
	case Cluster:
		o := *c.cluster
		if once {
			o.DialerRetries, o.MaxRetries, o.MaxRedirects = 1, -1, 1
			o.DialTimeout = dial
		}
		return goredis.NewClusterClient(&o)
	case Sentinel:
		o := *c.failover
		if once {
			o.DialerRetries, o.MaxRetries = 1, -1
			o.DialTimeout = dial
		}
		return goredis.NewFailoverClient(&o)
	}
	o := *c.single
	if once {
		o.DialerRetries, o.MaxRetries = 1, -1
		o.DialTimeout = dial
	}
	return goredis.NewClient(&o)
}

// Ping reaches Redis once, without retries (for a one-server URL, checking
// that it is not a cluster node or a sentinel, which need the other forms).
func (c *Conn) Ping(ctx context.Context) error {
	var dial time.Duration
	if dl, ok := ctx.Deadline(); ok {
		dial = max(time.Until(dl), time.Millisecond)
	}
	rdb := c.client(true, dial)
	defer rdb.Close()
	return c.check(ctx, rdb)
}

// check pings rdb and, for one server, refuses a cluster node or a
// sentinel with the URL form that fits.
func (c *Conn) check(ctx context.Context, rdb goredis.UniversalClient) error {
	if err := rdb.Ping(ctx).Err(); err != nil {
		return err
	}
	if c.Kind != Server {
		return nil
	}
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return err
	}
	switch {
	case strings.Contains(info, "redis_mode:cluster"):
		return fmt.Errorf("%s is a Redis Cluster node: use redis+cluster://%s (or rediss+cluster://), listing some of the cluster's nodes", c, strings.Join(c.Addrs, ","))
	case strings.Contains(info, "redis_mode:sentinel"):
		return fmt.Errorf("%s is a sentinel: use redis+sentinel://%s/<master name>", c, strings.Join(c.Addrs, ","))
	}
	return nil
}

// Open connects to the Redis the URL names (see Conn) and returns a store
// on it with the given key prefix.
func Open(ctx context.Context, rawURL, prefix string) (*Store, error) {
	c, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return OpenConn(ctx, c, prefix)
}

// OpenConn connects to c and returns a store on it with the given key
// prefix; Close closes the client.
func OpenConn(ctx context.Context, c *Conn, prefix string) (*Store, error) {
	rdb := c.Client()
	if err := c.check(ctx, rdb); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis %s: %w", c, err)
	}
	s := New(rdb, prefix)
	s.owned = true
	return s, nil
}
