package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
)

// redisServer is a redis-server of the bench's own, persistence off.
type redisServer struct {
	p    *proc
	port int
	url  string
}

func (e *env) startRedis(ctx context.Context) (*redisServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := e.start("redis-server", []string{program("redis-server"), "--port", fmt.Sprint(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--maxclients", "20000"})
	if err != nil {
		return nil, err
	}
	if err := waitPort(ctx, p, fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second); err != nil {
		return nil, err
	}
	return &redisServer{p: p, port: port, url: fmt.Sprintf("redis://127.0.0.1:%d/0", port)}, nil
}

// The bench starts its own Go servers (the grpc-go floor and the raw TLS
// handshake server) as separate processes by running its own binary again
// with FERRY_BENCH_ROLE set: each process has its own descriptor limit,
// and the server's RSS is its own.
const (
	roleEnv = "FERRY_BENCH_ROLE"
	addrEnv = "FERRY_BENCH_ADDR"
	pkiEnv  = "FERRY_BENCH_PKI"
)

// RunRole runs the server role this process was started for and exits;
// it returns at once when the process is not a bench server. The bench
// command and its tests call it first thing.
func RunRole() {
	role := os.Getenv(roleEnv)
	if role == "" {
		return
	}
	err := runRole(role, os.Getenv(addrEnv), os.Getenv(pkiEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferry-bench", role+":", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runRole(role, addr, pkiDir string) error {
	cert, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, "server.pem"), filepath.Join(pkiDir, "server.key"))
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(pkiDir, "ca.pem"))
	if err != nil {
		return err
	}
	p := &testPKI{server: cert}
	p.pool = newPool(caPEM)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	switch role {
	case "grpc-floor":
		s := grpc.NewServer(grpc.Creds(credentials.NewTLS(p.serverTLS())))
		devicev1.RegisterDeviceServiceServer(s, floorServer{})
		go func() { <-ctx.Done(); s.Stop() }()
		return s.Serve(l)
	case "tls-handshake":
		tl := tls.NewListener(l, p.serverTLS())
		go func() { <-ctx.Done(); tl.Close() }()
		for {
			c, err := tl.Accept()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_ = c.(*tls.Conn).Handshake()
				var b [1]byte
				_, _ = c.Read(b[:]) // until the client closes
			}()
		}
	}
	return fmt.Errorf("unknown role %q", role)
}

// floorServer is the least a bidirectional device stream can be: the
// Hello is read, a Session sent, and the stream then stays open reading.
type floorServer struct {
	devicev1.UnimplementedDeviceServiceServer
}

func (floorServer) Sync(s grpc.BidiStreamingServer[devicev1.SyncRequest, devicev1.SyncResponse]) error {
	if _, err := s.Recv(); err != nil {
		return err
	}
	if err := s.Send(&devicev1.SyncResponse{Message: &devicev1.SyncResponse_Session{Session: &devicev1.Session{Nonce: "floor"}}}); err != nil {
		return err
	}
	for {
		if _, err := s.Recv(); err != nil {
			return nil
		}
	}
}

// startRole starts this binary again as a bench server on a free port.
func (e *env) startRole(ctx context.Context, role string) (*proc, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p, err := e.start(role, []string{self}, roleEnv+"="+role, addrEnv+"="+addr, pkiEnv+"="+filepath.Dir(e.pki.caFile))
	if err != nil {
		return nil, "", err
	}
	if err := waitPort(ctx, p, addr, 20*time.Second); err != nil {
		return nil, "", err
	}
	return p, addr, nil
}
