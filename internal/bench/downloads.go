package bench

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"golang.org/x/sync/errgroup"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
)

var publishedRE = regexp.MustCompile(`published (\S+)`)

// downloads publishes one bundle and fetches it over TLS from ferryd (a
// download token per device, each its own connection with its device
// certificate, as the agent does) and from nginx serving the same file
// over TLS (client certificates required), with 1 and 16 clients at once.
func downloads(ctx context.Context, e *env, f *ferryd, ds *devices, o *Options) ([]Row, error) {
	if _, err := f.initRepo(ctx); err != nil {
		return nil, err
	}
	wwwDir := filepath.Join(e.dir, "www", "bench")
	if err := os.MkdirAll(wwwDir, 0o755); err != nil {
		return nil, err
	}
	file := filepath.Join(wwwDir, "bundle.bin")
	if err := writeRandom(file, o.BundleBytes); err != nil {
		return nil, err
	}
	e.logf("downloads: publishing a %d MiB bundle", o.BundleBytes>>20)
	out, err := f.ferryctl(ctx, "bundle", "publish", file, "--name", "bench", "--version", "1.0.0", "--repo-dir", filepath.Join(e.dir, "ferry-repo"))
	if err != nil {
		return nil, err
	}
	m := publishedRE.FindStringSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("ferryctl bundle publish said: %s", out)
	}
	target := m[1]
	sum, err := sha256File(file)
	if err != nil {
		return nil, err
	}
	// A device gets a download token for the bundle of its desired state
	// only.
	for _, d := range ds.list[:min(16, len(ds.list))] {
		if err := f.setDesiredBundle(ctx, d.id, &devicev1.Bundle{TargetPath: target, Length: uint64(o.BundleBytes), Sha256: sum}); err != nil {
			return nil, err
		}
	}
	ng, err := e.startNginx(ctx, filepath.Join(e.dir, "www"))
	if err != nil {
		return nil, err
	}
	defer ng.p.stop(5 * time.Second)

	var rows []Row
	for _, clients := range []int{1, 16} {
		if clients > len(ds.list) {
			return rows, fmt.Errorf("downloads need %d devices, have %d", clients, len(ds.list))
		}
		ferry, err := fetchAll(ctx, clients, o.BundleBytes, func(i int) (*http.Client, *http.Request, error) {
			d := ds.list[i]
			tok, err := d.conn.DownloadToken(ctx, target)
			if err != nil {
				return nil, nil, err
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, tok.URL, nil)
			if err != nil {
				return nil, nil, err
			}
			req.Header.Set("Authorization", "Bearer "+tok.Token)
			return ds.link.HTTPClient(d.creds), req, nil
		})
		if err != nil {
			return rows, fmt.Errorf("ferryd: %w", err)
		}
		peer, err := fetchAll(ctx, clients, o.BundleBytes, func(int) (*http.Client, *http.Request, error) {
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: e.pki.clientTLS(), ForceAttemptHTTP2: true}}
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, ng.url+"/bench/bundle.bin", nil)
			return c, req, err
		})
		if err != nil {
			return rows, fmt.Errorf("nginx: %w", err)
		}
		r := Row{Scenario: "downloads", What: fmt.Sprintf("token-gated %d MiB bundle over TLS, %d client(s), total", o.BundleBytes>>20, clients),
			Ferry: ferry, Unit: "MiB/s", Peer: "nginx, same file over TLS (HTTP/2)", PeerValue: peer, Target: "≥ 90% of nginx"}
		r.Met = atLeast(r.Ratio()*100, 90, "%")
		rows = append(rows, r)
	}
	return rows, nil
}

// fetchAll downloads with n clients at once (each built by mk, each its
// own connection) and returns the total throughput in MiB/s; every body
// must have size bytes. Each client runs twice and the faster run counts
// (the first warms the page cache and the connection pools).
func fetchAll(ctx context.Context, n int, size int64, mk func(i int) (*http.Client, *http.Request, error)) (float64, error) {
	best := 0.0
	for range 2 {
		type job struct {
			c   *http.Client
			req *http.Request
		}
		jobs := make([]job, n)
		for i := range n {
			c, req, err := mk(i)
			if err != nil {
				return 0, err
			}
			jobs[i] = job{c, req}
		}
		start := time.Now()
		g, _ := errgroup.WithContext(ctx)
		for _, j := range jobs {
			g.Go(func() error {
				defer j.c.CloseIdleConnections()
				resp, err := j.c.Do(j.req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
					return fmt.Errorf("GET %s: %s: %s", j.req.URL, resp.Status, b)
				}
				got, err := io.Copy(io.Discard, resp.Body)
				if err != nil {
					return err
				}
				if got != size {
					return fmt.Errorf("GET %s: %d bytes, want %d", j.req.URL, got, size)
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return 0, err
		}
		best = max(best, float64(int64(n)*size)/(1<<20)/time.Since(start).Seconds())
	}
	return best, nil
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func writeRandom(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type nginx struct {
	p   *proc
	url string
}

// startNginx serves root over TLS (HTTP/2, TLS 1.3, client certificates
// required) with worker processes for every core.
func (e *env) startNginx(ctx context.Context, root string) (*nginx, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	prefix := filepath.Join(e.dir, "nginx")
	if err := os.MkdirAll(filepath.Join(prefix, "logs"), 0o755); err != nil {
		return nil, err
	}
	conf := filepath.Join(prefix, "nginx.conf")
	text := fmt.Sprintf(`worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  sendfile on;
  server {
    listen 127.0.0.1:%[2]d ssl http2;
    ssl_certificate %[3]s;
    ssl_certificate_key %[4]s;
    ssl_client_certificate %[5]s;
    ssl_verify_client on;
    ssl_protocols TLSv1.3;
    root %[6]s;
  }
}
`, prefix, port, e.pki.certFile, e.pki.keyFile, e.pki.caFile, root)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, err
	}
	p, err := e.start("nginx", []string{program("nginx"), "-p", prefix, "-c", conf, "-e", filepath.Join(prefix, "logs", "error.log"), "-g", "daemon off;"})
	if err != nil {
		return nil, err
	}
	ng := &nginx{p: p, url: fmt.Sprintf("https://127.0.0.1:%d", port)}
	if err := waitPort(ctx, p, fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second); err != nil {
		return nil, err
	}
	return ng, nil
}
