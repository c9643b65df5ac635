package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpccreds "google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/ferryhq/ferry/internal/testredis"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// ferrydBinary builds ferryd once for the tests of this package.
func ferrydBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ferryd-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "ferryd")
		build := exec.Command("go", "build", "-o", binary, ".")
		build.Stderr = os.Stderr
		buildErr = build.Run()
	})
	if buildErr != nil {
		t.Fatalf("go build: %v", buildErr)
	}
	return binary
}

// process is a ferryd running as its own process.
type process struct {
	cmd        *exec.Cmd
	devicePort string // host:port
	apiURL     string // https://host:port
}

// startFerryd runs the binary with args on loopback ports chosen by the
// kernel and waits for the line that says where it listens.
func startFerryd(t *testing.T, args ...string) *process {
	t.Helper()
	cmd := exec.Command(ferrydBinary(t), append([]string{"--log-format", "json",
		"--device-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := bufio.NewScanner(stderr)
	var listening struct {
		Msg        string `json:"msg"`
		DevicePort string `json:"device_port"`
		APIPort    string `json:"api_port"`
	}
	for listening.Msg != "ferryd listening" && lines.Scan() {
		t.Log(lines.Text())
		json.Unmarshal(lines.Bytes(), &listening)
	}
	if listening.DevicePort == "" {
		t.Fatal("ferryd did not say where it listens")
	}
	go io.Copy(io.Discard, stderr) // keep the pipe flowing
	return &process{cmd: cmd, devicePort: listening.DevicePort, apiURL: listening.APIPort}
}

// devPKI reads the development credentials of a data directory.
type devPKI struct {
	dir   string
	roots *x509.CertPool
	token string
}

func readPKI(t *testing.T, dataDir string) devPKI {
	t.Helper()
	dir := filepath.Join(dataDir, "pki")
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	token, err := os.ReadFile(filepath.Join(dir, "operator.token"))
	if err != nil {
		t.Fatal(err)
	}
	return devPKI{dir: dir, roots: roots, token: strings.TrimSpace(string(token))}
}

func (p devPKI) httpClient() *http.Client {
	return &http.Client{Transport: &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: p.roots, ServerName: "localhost"}}}
}

// openStream opens development device id's stream on addr and reads the
// Session.
func (p devPKI) openStream(t *testing.T, addr, id string) grpc.BidiStreamingClient[devicev1.SyncRequest, devicev1.SyncResponse] {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(p.dir, "devices", id+".pem"), filepath.Join(p.dir, "devices", id+".key"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(grpccreds.NewTLS(
		&tls.Config{RootCAs: p.roots, Certificates: []tls.Certificate{cert}, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	stream, err := devicev1.NewDeviceServiceClient(conn).Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: &devicev1.Hello{}}}); err != nil {
		t.Fatal(err)
	}
	if msg, err := stream.Recv(); err != nil || msg.GetSession() == nil {
		t.Fatalf("stream did not open: %v, %v", msg, err)
	}
	// A round trip makes sure the server holds the stream.
	if err := stream.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{}}}); err != nil {
		t.Fatal(err)
	}
	if msg, err := stream.Recv(); err != nil || msg.GetRejected() == nil {
		t.Fatalf("no answer on the stream: %v, %v", msg, err)
	}
	return stream
}

// TestSIGTERM runs the ferryd binary as a user would, with its defaults
// (but loopback ports chosen by the kernel): health reports SERVING, a
// device opens its stream, and SIGTERM stops the process in under five
// seconds with exit status 0, telling the device to reconnect.
func TestSIGTERM(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	p := startFerryd(t, "--data-dir", data)
	pki := readPKI(t, data)

	// Health, as curl would ask it (Connect protocol, JSON, no credential).
	resp, err := pki.httpClient().Post(p.apiURL+"/grpc.health.v1.Health/Check", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "SERVING_STATUS_SERVING") {
		t.Fatalf("health: %s %s", resp.Status, body)
	}

	stream := pki.openStream(t, p.devicePort, "dev-1")
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("ferryd exited with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ferryd still running 5 seconds after SIGTERM with a device stream open")
	}
	t.Logf("stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("device stream ended with %v, want Unavailable", err)
	}
}

// TestTwoProcesses: two ferryd processes share one redis-server; a desired
// state set through A reaches the device whose stream is on B.
func TestTwoProcesses(t *testing.T) {
	redisURL, prefix := testredis.URL(t), testredis.Prefix(t)
	dataA := filepath.Join(t.TempDir(), "a")
	a := startFerryd(t, "--data-dir", dataA, "--redis-url", redisURL, "--redis-prefix", prefix)
	pki := readPKI(t, dataA)
	b := startFerryd(t, "--data-dir", filepath.Join(t.TempDir(), "b"), "--redis-url", redisURL, "--redis-prefix", prefix,
		"--tls-cert", filepath.Join(pki.dir, "server.pem"), "--tls-key", filepath.Join(pki.dir, "server.key"),
		"--device-ca", filepath.Join(pki.dir, "ca.pem"), "--operator-keys", filepath.Join(pki.dir, "operators.json"))

	stream := pki.openStream(t, b.devicePort, "dev-2")
	fleet := fleetv1connect.NewFleetServiceClient(pki.httpClient(), a.apiURL, connect.WithInterceptors(
		connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				req.Header().Set("Authorization", "Bearer "+pki.token)
				return next(ctx, req)
			}
		})))
	for v := uint64(1); v <= 2; v++ {
		resp, err := fleet.SetDesiredState(context.Background(), connect.NewRequest(&fleetv1.SetDesiredStateRequest{
			DeviceId: "dev-2",
			Document: &devicev1.DesiredDocument{Config: map[string]string{"round": string(rune('0' + v))}},
		}))
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan *devicev1.SyncResponse, 1)
		go func() { m, _ := stream.Recv(); got <- m }()
		select {
		case m := <-got:
			if d := m.GetDelta(); d.GetDesiredVersion() != v || d.GetJobId() != resp.Msg.GetDevice().GetDesired().GetJobId() {
				t.Fatalf("on B: %v, want the version %d set on A", m, v)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("version %d set on A did not reach the device on B", v)
		}
	}
}
