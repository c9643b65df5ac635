package server_test

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpccreds "google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/ferryhq/ferry/internal/ferrytest"
	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/server"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// probe GETs path with no credential over HTTP/1.1, as curl and a
// Kubernetes httpGet probe do, and returns the status code and body.
func probe(t *testing.T, f *ferrytest.Ferryd, method, path string) (int, string) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost"}}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(method, f.APIURL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body))
}

// TestReflectionServices: reflection on the API port lists gRPC health and
// the services served there, not the device service (served on the device
// port only), and resolves the health service's descriptor, as grpcurl
// and buf curl need to call it.
func TestReflectionServices(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	conn, err := grpc.NewClient(f.APIAddr(), grpc.WithTransportCredentials(grpccreds.NewTLS(
		&tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+f.OperatorToken(t))
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(req *reflectionpb.ServerReflectionRequest) *reflectionpb.ServerReflectionResponse {
		t.Helper()
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	var names []string
	for _, s := range ask(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}).GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	slices.Sort(names)
	want := []string{
		"ferry.credentials.v1.CredentialService", "ferry.credentials.v1.DownloadKeyService", "ferry.fleet.v1.AuditService", "ferry.fleet.v1.FleetService", "ferry.fleet.v1.OperatorService",
		"ferry.fleet.v1.RolloutService", "ferry.repository.v1.RepositoryService", "grpc.health.v1.Health",
	}
	if !slices.Equal(names, want) {
		t.Errorf("reflection lists %q, want %q", names, want)
	}
	files := ask(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{
		FileContainingSymbol: "grpc.health.v1.Health",
	}}).GetFileDescriptorResponse().GetFileDescriptorProto()
	if len(files) == 0 {
		t.Error("reflection has no descriptor of grpc.health.v1.Health")
	}
	// And the call itself, anonymous.
	health, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "ferry.device.v1.DeviceService"})
	if err != nil || health.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health of the device service: %v, %v", health, err)
	}
}

// TestHealthHTTP: /healthz and /readyz answer anonymous GETs with 200
// while ferryd serves, and 503 while it stops (during the shutdown delay);
// other methods are refused.
func TestHealthHTTP(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) { cfg.ShutdownDelay = 3 * time.Second })
	for _, path := range []string{server.LivenessPath, server.ReadinessPath} {
		if code, body := probe(t, f, http.MethodGet, path); code != http.StatusOK || body != "ok" {
			t.Errorf("GET %s: %d %q, want 200 ok", path, code, body)
		}
		if code, _ := probe(t, f, http.MethodHead, path); code != http.StatusOK {
			t.Errorf("HEAD %s: %d, want 200", path, code)
		}
		if code, _ := probe(t, f, http.MethodPost, path); code != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %d, want 405", path, code)
		}
	}

	var stopped sync.WaitGroup
	stopped.Go(func() { f.Stop() })
	defer stopped.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := probe(t, f, http.MethodGet, server.LivenessPath)
		if code == http.StatusServiceUnavailable {
			if body != "stopping" {
				t.Errorf("GET /healthz while stopping: %q, want stopping", body)
			}
			break
		}
		if code != http.StatusOK || time.Now().After(deadline) {
			t.Fatalf("GET /healthz after the stop began: %d %q, want 503", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := probe(t, f, http.MethodGet, server.ReadinessPath); code != http.StatusServiceUnavailable || body != "stopping" {
		t.Errorf("GET /readyz while stopping: %d %q, want 503 stopping", code, body)
	}
}

// TestReadyStoreUnreachable: with its Redis gone, ferryd stays alive but
// is soon not ready, and says why (without Redis's address). TestStoreOutage
// has the whole outage.
func TestReadyStoreUnreachable(t *testing.T) {
	url, stopRedis := testredis.Private(t, 0)
	f := ferrytest.Start(t, ferrytest.Redis, func(cfg *server.Config) { cfg.RedisURL = url })
	if code, body := probe(t, f, http.MethodGet, server.ReadinessPath); code != http.StatusOK {
		t.Fatalf("GET /readyz with Redis up: %d %q", code, body)
	}
	stopRedis()
	// The store is checked every second or so; readiness follows.
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := probe(t, f, http.MethodGet, server.ReadinessPath)
		if code == http.StatusServiceUnavailable && body == "store unreachable" {
			break
		}
		if code != http.StatusOK || time.Now().After(deadline) {
			t.Fatalf("GET /readyz with Redis down: %d %q, want 503 store unreachable", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, body := probe(t, f, http.MethodGet, server.LivenessPath); code != http.StatusOK {
		t.Errorf("GET /healthz with Redis down: %d %q, want 200 (alive, not ready)", code, body)
	}
}

// TestReadyTimestampExpired: once the timestamp ferryd signed has expired
// by the repository's clock, ferryd is not ready; re-signing fixes it.
func TestReadyTimestampExpired(t *testing.T) {
	clock := &clock{now: time.Now()}
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) { cfg.Repository.Clock = clock.Now })
	newRepoFixture(t, f, tuftest.Options{Now: clock.Now})
	if code, body := probe(t, f, http.MethodGet, server.ReadinessPath); code != http.StatusOK {
		t.Fatalf("GET /readyz after publishing: %d %q", code, body)
	}
	clock.Add(f.Config().Repository.TimestampExpiry + time.Minute)
	code, body := probe(t, f, http.MethodGet, server.ReadinessPath)
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "repository: timestamp version ") || !strings.Contains(body, " expired at ") {
		t.Errorf("GET /readyz with the timestamp expired: %d %q, want 503 repository: timestamp … expired at …", code, body)
	}
}

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestProbe: server.Probe, what "ferryd healthcheck" runs, on an address
// without a host as a container gives it.
func TestProbe(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	_, port, _ := strings.Cut(f.APIAddr(), ":")
	ctx := context.Background()
	for _, addr := range []string{f.APIAddr(), ":" + port, "0.0.0.0:" + port} {
		for _, path := range []string{server.LivenessPath, server.ReadinessPath} {
			if line, err := server.Probe(ctx, addr, path); err != nil || line != "ok" {
				t.Errorf("Probe(%s, %s) = %q, %v", addr, path, line, err)
			}
		}
	}
	if _, err := server.Probe(ctx, "127.0.0.1:"+port, "/nothing-here"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Probe of a missing path = %v, want a 404 error", err)
	}
	if _, err := server.Probe(ctx, "no port", server.LivenessPath); err == nil {
		t.Error("Probe of a malformed address succeeded")
	}
}
