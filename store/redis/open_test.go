package redis_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/store/redis"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		url    string
		kind   redis.Kind
		addrs  string // comma-separated
		master string
		where  string // Conn.String()
	}{
		{url: "redis://127.0.0.1:6379/0", kind: redis.Server, addrs: "127.0.0.1:6379", where: "127.0.0.1:6379"},
		{url: "redis://localhost", kind: redis.Server, addrs: "localhost:6379"},
		{url: "redis://:secret@redis.internal:7000/3", kind: redis.Server, addrs: "redis.internal:7000"},
		{url: "rediss://ferry:secret@redis.internal/0?dial_timeout=3s", kind: redis.Server, addrs: "redis.internal:6379"},
		{url: "REDIS://[::1]:6380/1", kind: redis.Server, addrs: "[::1]:6380"},
		{url: "unix:///run/redis/redis.sock?db=2", kind: redis.Server, addrs: "/run/redis/redis.sock", where: "/run/redis/redis.sock"},
		{url: "redis+cluster://h1:7000,h2:7001,h3", kind: redis.Cluster, addrs: "h1:7000,h2:7001,h3:6379", where: "h1:7000,h2:7001,h3:6379 (Redis Cluster)"},
		{url: "redis+cluster://ferry:pw@h1:7000/?addr=h2:7001&addr=h3:7002&pool_size=20", kind: redis.Cluster, addrs: "h1:7000,h2:7001,h3:7002"},
		{url: "rediss+cluster://ferry:pw@[::1]:7000,[::1]:7001/0?server_name=redis.internal", kind: redis.Cluster, addrs: "[::1]:7000,[::1]:7001"},
		{url: "redis+sentinel://s1,s2:26380/mymaster", kind: redis.Sentinel, addrs: "s1:26379,s2:26380", master: "mymaster", where: "s1:26379,s2:26380 (Sentinel, master mymaster)"},
		{url: "redis+sentinel://ferry:pw@s1:26379,s2:26379,s3:26379/mymaster/2?sentinel_password=spw&read_timeout=2s", kind: redis.Sentinel, addrs: "s1:26379,s2:26379,s3:26379", master: "mymaster"},
		{url: "rediss+sentinel://s1:26379/mymaster?addr=s2:26379&skip_verify=true", kind: redis.Sentinel, addrs: "s1:26379,s2:26379", master: "mymaster"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			c, err := redis.ParseURL(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			if c.Kind != tt.kind || strings.Join(c.Addrs, ",") != tt.addrs || c.MasterName != tt.master {
				t.Errorf("got %s %v master %q, want %s %s master %q", c.Kind, c.Addrs, c.MasterName, tt.kind, tt.addrs, tt.master)
			}
			if tt.where != "" && c.String() != tt.where {
				t.Errorf("String() = %q, want %q", c.String(), tt.where)
			}
			if strings.Contains(c.String(), "pw") || strings.Contains(c.String(), "secret") {
				t.Errorf("String() = %q shows a password", c.String())
			}
			c.Client().Close() // builds without dialing
		})
	}
}

func TestParseURLRefuses(t *testing.T) {
	tests := []struct{ url, want string }{
		{"", "want a URL such as"},
		{"127.0.0.1:6379", "want a URL such as"},
		{"http://h:6379", `unknown scheme "http"`},
		{"redis+ring://h1,h2", `unknown scheme "redis+ring"`},
		{"unix+cluster:///x", `unknown scheme "unix+cluster"`},
		{"redis://h1:7000,h2:7001", "use redis+cluster://"},
		{"redis://", "no host"},
		{"redis://:pw@h:notaport/0", "bad port"},
		{"redis://:pw@h:99999/0", "bad port"},
		{"redis://h/x", "invalid database number"},
		{"redis://h?nonsense=1", "unexpected option"},
		{"redis://h?ca_file=/x", "needs TLS"},
		{"redis://:p%zz@h", "invalid URL escape"},
		{"redis://h#frag", "fragment"},
		{"redis+cluster://h1,,h2", `address "": no host`},
		{"redis+cluster://h1:7000,::1:7001", "brackets"},
		{"redis+cluster://h1/3", "only database 0"},
		{"redis+cluster://h1?addr=nohostport:", "bad port"},
		{"redis+cluster://h1?read_timeout=soon", "read_timeout"},
		{"redis+sentinel://s1,s2", "needs the master name"},
		{"redis+sentinel://s1/m/x", `database "x"`},
		{"redis+sentinel://s1/m/0/9", "want /master or /master/db"},
		{"redis+sentinel://s1/m?master_name=other", "option master_name"},
		{"redis+sentinel://s1/m?password=pw", "option password"},
		{"rediss+sentinel://s1/m?skip_verify=maybe", "skip_verify"},
		{"rediss://h?ca_file=/does/not/exist", "ca_file"},
		{"rediss://h?cert_file=/x", "cert_file and key_file go together"},
		{"unix://host/sock", "socket path"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			c, err := redis.ParseURL(tt.url)
			if err == nil {
				t.Fatalf("parsed as %s %v", c.Kind, c.Addrs)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "pw") {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

// FuzzParseURL checks that no input makes the parser panic, that an
// accepted URL names at least one address, and that a password never
// shows in an error or in String.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"redis://127.0.0.1:6379/0", "rediss://u:p@h/1?dial_timeout=1s", "unix:///s.sock",
		"redis+cluster://h1:7000,h2:7001/?addr=h3:7002", "rediss+cluster://[::1]:7000",
		"redis+sentinel://u:p@s1,s2:26380/m/2?sentinel_password=x", "redis://h1,h2", "redis+sentinel://s1",
	} {
		f.Add(s)
	}
	const secret = "S3cr3tPw"
	f.Fuzz(func(t *testing.T, raw string) {
		if strings.Contains(raw, secret) {
			return
		}
		// Put a password in the URL when it has a place for one.
		withPw := raw
		if i := strings.Index(raw, "://"); i >= 0 && !strings.ContainsAny(raw[i+3:], "@") {
			withPw = raw[:i+3] + "u:" + secret + "@" + raw[i+3:]
		}
		for _, u := range []string{raw, withPw} {
			c, err := redis.ParseURL(u)
			if err != nil {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error for %q shows the password: %v", u, err)
				}
				continue
			}
			if len(c.Addrs) == 0 && c.Kind != redis.Server {
				t.Fatalf("%q: %s with no address", u, c.Kind)
			}
			if strings.Contains(c.String(), secret) {
				t.Fatalf("String() of %q shows the password: %s", u, c)
			}
		}
	})
}

// TestOpenNamesTheRightForm checks that a one-server URL pointing at a
// cluster node says to use redis+cluster://, and that the cluster and
// Sentinel forms open stores that work.
func TestOpenNamesTheRightForm(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seeds := testredis.Cluster(t)
	_, err := redis.Open(ctx, "redis://"+seeds[0]+"/0", testredis.Prefix(t))
	if err == nil || !strings.Contains(err.Error(), "use redis+cluster://"+seeds[0]) {
		t.Fatalf("Open(redis:// a cluster node) = %v, want a hint to redis+cluster://", err)
	}
	s, err := redis.Open(ctx, "redis+cluster://"+strings.Join(seeds, ","), testredis.Prefix(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ListRollouts(ctx, "", 10); err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// TestOpenTLS: a rediss:// URL with ca_file reaches a TLS-only server; a
// redis:// URL and one without the CA do not.
func TestOpenTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addr, ca := testredis.TLS(t)
	s, err := redis.Open(ctx, "rediss://"+addr+"/0?ca_file="+ca, testredis.Prefix(t))
	if err != nil {
		t.Fatalf("rediss:// with ca_file: %v", err)
	}
	if _, err := s.ListRollouts(ctx, "", 10); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := redis.Open(ctx, "rediss://"+addr+"/0?max_retries=-1", testredis.Prefix(t)); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("rediss:// without the CA: %v, want a certificate error", err)
	}
	if _, err := redis.Open(ctx, "redis://"+addr+"/0?max_retries=-1&dial_timeout=1s&read_timeout=1s", testredis.Prefix(t)); err == nil {
		t.Error("redis:// to a TLS port worked")
	}
}
