package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ferryhq/ferry/internal/ferrytest"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/server"
)

// oversized is a request body of size bytes that is one protobuf message
// (field 1, a string) in the Connect unary or the gRPC framing; it is made
// as it is read, never held, and counts what the client sent.
type oversized struct {
	head []byte
	left int64
	sent atomic.Int64
}

func newOversized(size int64, grpc bool) *oversized {
	field := protowire.AppendTag(nil, 1, protowire.BytesType)
	payload := size - int64(len(field)) - int64(protowire.SizeVarint(uint64(size)))
	msg := protowire.AppendVarint(field, uint64(payload))
	if grpc {
		prefix := make([]byte, 5)
		binary.BigEndian.PutUint32(prefix[1:], uint32(int64(len(msg))+payload))
		msg = append(prefix, msg...)
	}
	return &oversized{head: msg, left: payload}
}

func (o *oversized) Read(p []byte) (int, error) {
	n := copy(p, o.head)
	o.head = o.head[n:]
	for ; n < len(p) && o.left > 0; n++ {
		p[n] = 'a'
		o.left--
	}
	o.sent.Add(int64(n))
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// post sends body to path in the Connect unary or the gRPC protocol and
// returns the code of the answer ("ok" for success), or what went wrong
// (it runs on goroutines of its own, where a test cannot stop).
func post(c *http.Client, url, path string, grpc bool, header http.Header, body io.Reader) string {
	req, err := http.NewRequest(http.MethodPost, url+path, body)
	if err != nil {
		return err.Error()
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if grpc {
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
	} else {
		req.Header.Set("Content-Type", "application/proto")
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Sprintf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if grpc {
		s := resp.Trailer.Get("Grpc-Status")
		if s == "" {
			s = resp.Header.Get("Grpc-Status")
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Sprintf("POST %s: HTTP %d without grpc-status: %q", path, resp.StatusCode, raw)
		}
		if n == 0 {
			return "ok"
		}
		return connect.Code(n).String()
	}
	if resp.StatusCode == http.StatusOK {
		return "ok"
	}
	var e struct{ Code string }
	if err := json.Unmarshal(raw, &e); err != nil || e.Code == "" {
		return fmt.Sprintf("POST %s: HTTP %d with no Connect error: %q", path, resp.StatusCode, raw)
	}
	return e.Code
}

// memory is what the process held at a moment: the bytes allocated so far
// on the heap (cumulative) and the resident set.
type memory struct{ allocs, rss uint64 }

func readAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// procStatus returns a /proc/self/status field (kB), in bytes.
func procStatus(t *testing.T, field string) uint64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("/proc/self/status has no %s", field)
	return 0
}

// measure runs f and returns how many heap bytes it allocated and how far
// the peak resident set rose above the resident set before it.
func measure(t *testing.T, f func()) (allocs, rssRise uint64) {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	before := procStatus(t, "VmRSS")
	// "5" resets the peak resident set (VmHWM) to the current one.
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Fatalf("reset peak RSS: %v", err)
	}
	a := readAllocs()
	f()
	allocs = readAllocs() - a
	if peak := procStatus(t, "VmHWM"); peak > before {
		rssRise = peak - before
	}
	return allocs, rssRise
}

// TestLimitsOversizedBody: a 64 MiB body is refused before it is read,
// anonymous or not, on the paths that need an operator and on the
// anonymous ones (enrollment, health): the server answers after reading
// a small part of it, and neither the heap allocated nor the resident set
// rises by anything near the body's size. Four at once are no worse. An
// anonymous body is refused from its headers (the operator paths) or
// after 64 KiB (the anonymous ones); an operator's Connect body is read up
// to the 4 MiB message limit, whose buffer grows by doubling.
func TestLimitsOversizedBody(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	client := f.HTTPClient(t)
	operator := http.Header{"Authorization": {"Bearer " + f.OperatorToken(t)}}
	const size = 64 << 20
	const (
		getDevice = "/ferry.fleet.v1.FleetService/GetDevice"
		enroll    = "/ferry.credentials.v1.CredentialService/Enroll"
		health    = "/grpc.health.v1.Health/Check"
	)
	tests := []struct {
		name   string
		path   string
		grpc   bool
		header http.Header
		at     int // requests at once
		want   string
		// within bounds the client's bytes sent, the heap allocated and
		// the peak RSS rise, as a fraction of the bodies' size.
		within uint64
	}{
		{"GetDevice anonymous, Connect", getDevice, false, nil, 1, "unauthenticated", 8},
		{"GetDevice anonymous, gRPC", getDevice, true, nil, 1, "unauthenticated", 8},
		{"GetDevice anonymous, four at once", getDevice, false, nil, 4, "unauthenticated", 8},
		{"GetDevice operator, Connect", getDevice, false, operator, 1, "resource_exhausted", 3},
		{"GetDevice operator, gRPC", getDevice, true, operator, 1, "resource_exhausted", 8},
		{"Enroll anonymous, Connect", enroll, false, nil, 1, "resource_exhausted", 8},
		{"Enroll anonymous, gRPC", enroll, true, nil, 1, "resource_exhausted", 8},
		{"Enroll anonymous, four at once", enroll, false, nil, 4, "resource_exhausted", 8},
		{"health anonymous, gRPC", health, true, nil, 1, "resource_exhausted", 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bodies := make([]*oversized, tt.at)
			codes := make([]string, tt.at)
			allocs, rss := measure(t, func() {
				var wg sync.WaitGroup
				for i := range bodies {
					bodies[i] = newOversized(size, tt.grpc)
					wg.Go(func() { codes[i] = post(client, f.APIURL(), tt.path, tt.grpc, tt.header, bodies[i]) })
				}
				wg.Wait()
			})
			var sent int64
			for i, b := range bodies {
				if codes[i] != tt.want {
					t.Errorf("answer %d: %s, want %s", i, codes[i], tt.want)
				}
				sent += b.sent.Load()
			}
			total := uint64(tt.at) * size
			t.Logf("%d × %d MiB: client sent %.1f MiB before the answer; heap allocated %.1f MiB, peak RSS rose %.1f MiB",
				tt.at, size>>20, float64(sent)/(1<<20), float64(allocs)/(1<<20), float64(rss)/(1<<20))
			if uint64(sent) > total/tt.within {
				t.Errorf("the client sent %d of %d bytes before the answer: the server read the body", sent, total)
			}
			if allocs > total/tt.within*memoryOverhead {
				t.Errorf("heap allocations rose %d bytes for %d bytes of body", allocs, total)
			}
			if rss > total/tt.within*memoryOverhead {
				t.Errorf("peak RSS rose %d bytes for %d bytes of body", rss, total)
			}
		})
	}
}

// TestLimitsHeaderSize: a request header over the limit is refused (431)
// before any handler runs, over HTTP/1.1 and over HTTP/2 (whose client
// sees the limit in the server's settings and does not send it).
func TestLimitsHeaderSize(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	h1 := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost"},
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 only
	}}
	h2 := f.HTTPClient(t)
	limit := server.DefaultConfig().API.MaxHeaderBytes
	tests := []struct {
		name    string
		client  *http.Client
		pad     int
		refused bool
	}{
		{"HTTP/1.1, small header", h1, 1 << 10, false},
		{"HTTP/1.1, twice the limit", h1, 2 * limit, true},
		{"HTTP/1.1, a megabyte", h1, 1 << 20, true},
		{"HTTP/2, small header", h2, 1 << 10, false},
		{"HTTP/2, twice the limit", h2, 2 * limit, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, f.APIURL()+server.LivenessPath, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Pad", strings.Repeat("p", tt.pad))
			resp, err := tt.client.Do(req)
			switch {
			case err != nil && tt.refused && strings.Contains(err.Error(), "larger than peer's advertised limit"):
				// The HTTP/2 server advertised its limit.
			case err != nil:
				t.Fatal(err)
			default:
				resp.Body.Close()
				if refused := resp.StatusCode == http.StatusRequestHeaderFieldsTooLarge; refused != tt.refused || !refused && resp.StatusCode != http.StatusOK {
					t.Errorf("GET %s with a %d-byte header: HTTP %d, want refused %v", server.LivenessPath, tt.pad, resp.StatusCode, tt.refused)
				}
			}
		})
	}
}

// TestLimitsInflightBytes: while an upload holds most of the in-flight
// budget, another body is refused UNAVAILABLE, not buffered; once the
// upload ends, the same call gets through to its handler.
func TestLimitsInflightBytes(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) {
		cfg.API.MaxMessageBytes = 512 << 10
		cfg.API.MaxInflightBytes = 640 << 10
	})
	repo := f.Repository(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	upload := repo.UploadBlob(ctx)
	chunk := bytes.Repeat([]byte("x"), 500<<10)
	for _, m := range []*repositoryv1.UploadBlobRequest{
		{Message: &repositoryv1.UploadBlobRequest_Info{Info: &repositoryv1.BlobInfo{Length: 4 << 20, Sha256: strings.Repeat("0", 64)}}},
		{Message: &repositoryv1.UploadBlobRequest_Chunk{Chunk: chunk}},
	} {
		if err := upload.Send(m); err != nil {
			t.Fatalf("upload: %v", err)
		}
	}

	// Wait until the server has read the chunk and holds its bytes (the
	// gauge), then ask once: a request polled meanwhile would compete with
	// the upload for the budget.
	deadline := time.Now().Add(10 * time.Second)
	for scrape(t, f, "ferry_api_inflight_request_bytes") < 500<<10 {
		if time.Now().After(deadline) {
			t.Fatalf("the upload's chunk is not held after 10s: in-flight bytes %v", scrape(t, f, "ferry_api_inflight_request_bytes"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	fleet := f.Fleet(t)
	other := connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: strings.Repeat("d", 200<<10)})
	_, err := fleet.GetDevice(context.Background(), other)
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("GetDevice with a 200 KiB body while an upload holds 500 KiB of 640 KiB: %v, want unavailable", err)
	}

	cancel() // the upload ends and gives its bytes back
	deadline = time.Now().Add(10 * time.Second)
	for {
		_, err = fleet.GetDevice(context.Background(), other)
		if connect.CodeOf(err) != connect.CodeUnavailable || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := connect.CodeOf(err); code != connect.CodeInvalidArgument {
		t.Fatalf("GetDevice with a malformed 200 KiB id after the upload ended: %v, want invalid_argument from the handler", err)
	}
	if n := scrape(t, f, `ferry_api_requests_refused_total{reason="inflight_bytes"}`); n < 1 {
		t.Errorf("refusals for in-flight bytes counted %v, want at least 1", n)
	}
}

// scrapers holds one HTTP client per ferryd for scrape, so that scraping
// often opens one connection.
var scrapers sync.Map // *ferrytest.Ferryd -> *http.Client

// scrape returns a metric's value from /metrics.
func scrape(t *testing.T, f *ferrytest.Ferryd, series string) float64 {
	t.Helper()
	c, _ := scrapers.LoadOrStore(f, f.HTTPClient(t))
	req, _ := http.NewRequest(http.MethodGet, f.APIURL()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+f.OperatorToken(t))
	resp, err := c.(*http.Client).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	return 0
}
