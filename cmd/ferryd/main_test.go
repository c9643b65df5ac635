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
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpccreds "google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
)

// TestSIGTERM runs the ferryd binary as a user would, with its defaults
// (but loopback ports chosen by the kernel): health reports SERVING, a
// device opens its stream, and SIGTERM stops the process in under five
// seconds with exit status 0, telling the device to reconnect.
func TestSIGTERM(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "ferryd")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	data := filepath.Join(dir, "data")
	cmd := exec.Command(bin, "--data-dir", data, "--log-format", "json",
		"--device-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })

	// The first log line names the ports.
	lines := bufio.NewScanner(stderr)
	var listening struct {
		Msg        string `json:"msg"`
		DevicePort string `json:"device_port"`
		APIPort    string `json:"api_port"`
	}
	for lines.Scan() && listening.Msg != "ferryd listening" {
		t.Log(lines.Text())
		json.Unmarshal(lines.Bytes(), &listening)
	}
	if listening.DevicePort == "" {
		t.Fatal("ferryd did not say where it listens")
	}
	go func() {
		for lines.Scan() {
			t.Log(lines.Text())
		}
	}()

	pki := filepath.Join(data, "pki")
	caPEM, err := os.ReadFile(filepath.Join(pki, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)

	// Health, as curl would ask it (Connect protocol, JSON, no credential).
	client := &http.Client{Transport: &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}}}
	resp, err := client.Post(listening.APIPort+"/grpc.health.v1.Health/Check", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "SERVING_STATUS_SERVING") {
		t.Fatalf("health: %s %s", resp.Status, body)
	}

	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "devices", "dev-1.pem"), filepath.Join(pki, "devices", "dev-1.key"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(listening.DevicePort, grpc.WithTransportCredentials(grpccreds.NewTLS(
		&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := devicev1.NewDeviceServiceClient(conn).Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*devicev1.SyncRequest{
		{Message: &devicev1.SyncRequest_Hello{Hello: &devicev1.Hello{}}},
		{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{}}},
	} {
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"session", "rejected"} {
		msg, err := stream.Recv()
		if err != nil || want == "session" && msg.GetSession() == nil || want == "rejected" && msg.GetRejected() == nil {
			t.Fatalf("stream did not open: got %v, %v; want %s", msg, err, want)
		}
	}

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
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
