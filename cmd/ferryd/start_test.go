package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runFerryd runs the binary with args to its end and returns its exit
// status and output.
func runFerryd(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(ferrydBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

// TestFailedStarts: a ferryd that cannot start says why and exits 1,
// without a panic.
func TestFailedStarts(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	first := startFerryd(t, "--data-dir", data)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	free := l.Addr().String()
	l.Close()

	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"same data directory", []string{"--data-dir", data, "--device-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"},
			[]string{"ferryd: store: data directory " + data + " is in use by another ferryd (pid " + strconv.Itoa(first.cmd.Process.Pid) + ")"}},
		{"Redis not running", []string{"--data-dir", t.TempDir(), "--device-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0",
			"--redis-url", "redis://" + free + "/0", "--redis-connect-timeout", "1s"},
			[]string{"cannot reach Redis at " + free + ": ", "; retrying", "ferryd: store: cannot reach Redis at " + free + " for 1s: ", "connection refused"}},
		{"busy port", []string{"--data-dir", t.TempDir(), "--device-addr", "127.0.0.1:0", "--api-addr", strings.TrimPrefix(first.apiURL, "https://")},
			[]string{"ferryd: API port: ", "address already in use", "--api-addr"}},
		{"connection caps over the descriptor limit", []string{"--data-dir", t.TempDir(), "--device-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", "--device-max-conns", "100000000"},
			[]string{"ferryd: connection caps: device port 100000000 plus API port ", "descriptors left", "--device-max-conns"}},
		{"message limit too small", []string{"--data-dir", t.TempDir(), "--api-max-message-bytes", "10", "--api-handshake-timeout", "0s"},
			[]string{"ferryd: configuration: ", "API max message sizes 10 and 65536 (anonymous)", "API handshake and idle timeouts must be positive"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := runFerryd(t, nil, tt.args...)
			if code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
				t.Errorf("ferryd panicked:\n%s", out)
			}
			rest := out
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("output:\n%s\nwant (in order) %q", out, tt.want)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}

// TestHealthcheck: "ferryd healthcheck", the image's HEALTHCHECK, exits 0
// against a serving ferryd (address by flag or FERRY_API_ADDR, as the image
// sets it) and 1 when nothing answers.
func TestHealthcheck(t *testing.T) {
	p := startFerryd(t, "--data-dir", t.TempDir())
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(p.apiURL, "https://"))
	tests := []struct {
		name string
		env  []string
		args []string
		code int
		out  string
	}{
		{"readiness by flag", nil, []string{"--api-addr", "127.0.0.1:" + port}, 0, "ok\n"},
		{"liveness by flag", nil, []string{"--api-addr", "127.0.0.1:" + port, "--live"}, 0, "ok\n"},
		{"address from the environment, no host", []string{"FERRY_API_ADDR=:" + port}, nil, 0, "ok\n"},
		{"nothing listening", nil, []string{"--api-addr", "127.0.0.1:1", "--timeout", "2s"}, 1, "ferryd: healthcheck: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := runFerryd(t, tt.env, append([]string{"healthcheck"}, tt.args...)...)
			if code != tt.code || !strings.HasPrefix(out, tt.out) {
				t.Errorf("exit %d, output %q; want %d, %q…", code, out, tt.code, tt.out)
			}
		})
	}
}

// TestHealthWhileStopping: "curl -k https://localhost:8443/healthz", no
// credential: 200 while ferryd serves, 503 once SIGTERM started its stop
// (during --shutdown-delay), then the process exits 0.
func TestHealthWhileStopping(t *testing.T) {
	p := startFerryd(t, "--data-dir", t.TempDir(), "--shutdown-delay", "3s")
	curl := func() (int, string, error) {
		// Like curl -k: HTTP/1.1, certificate not verified, a new connection.
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
		resp, err := client.Get(p.apiURL + "/healthz")
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}
	if code, body, err := curl(); err != nil || code != 200 || body != "ok\n" {
		t.Fatalf("GET /healthz while serving: %d %q %v", code, body, err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var last string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		code, body, err := curl()
		last = fmt.Sprintf("%d %q %v", code, body, err)
		if code == 503 {
			if body != "stopping\n" {
				t.Errorf("GET /healthz while stopping: %s", last)
			}
			break
		}
		if err != nil || code != 200 || time.Now().After(deadline) {
			t.Fatalf("GET /healthz after SIGTERM: %s, want 503", last)
		}
	}
	if err := p.cmd.Wait(); err != nil {
		t.Errorf("ferryd exited with %v", err)
	}
}
