package deploy

import (
	"crypto/tls"
	"encoding/base64"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/tuf"
)

// TestHelmDeploymentRuns: two ferryd, started as the chart's Deployment
// says (its environment, the Redis URL from its Secret, its Secrets as
// files at their mount paths, an emptyDir data directory each, one shared
// repository directory), with real TLS material and keys given to the
// chart as files, become ready on one Redis and sign with the online keys
// of the Secret without writing any; on SIGTERM one answers 503 while it
// keeps serving and exits within terminationGracePeriodSeconds.
func TestHelmDeploymentRuns(t *testing.T) {
	bin := filepath.Join(rootfs(t), "usr/local/bin/ferryd")
	tmp := t.TempDir()
	pki, err := credentials.EnsureDev(filepath.Join(tmp, "pki"), credentials.DevOptions{
		TrustDomain: "fleet.example.com", Hosts: []string{"localhost", "127.0.0.1"}, CertTTL: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	keysDir := filepath.Join(tmp, "online-keys")
	if _, err := tuf.EnsureOnlineKeys(keysDir); err != nil {
		t.Fatal(err)
	}
	_, objs := render(t, []string{"single-values.yaml"}, []string{
		"redis.url=" + testredis.URL(t),
		"@tls.cert=" + pki.ServerCert, "@tls.key=" + pki.ServerKey,
		"@deviceCA.cert=" + pki.CACert,
		"@operatorKeys.json=" + pki.Operators,
		"@onlineKeys.snapshot=" + filepath.Join(keysDir, "snapshot.pem"),
		"@onlineKeys.timestamp=" + filepath.Join(keysDir, "timestamp.pem"),
	})
	secrets := map[string]manifest{}
	var dep manifest
	for _, o := range objs {
		switch o.kind() {
		case "Secret":
			secrets[o.name()] = o
		case "Deployment":
			dep = o
		}
	}
	pod := at(dep, "spec", "template", "spec")
	c := at(pod, "containers", 0)
	secretFile := func(name, key string) []byte {
		b, err := base64.StdEncoding.DecodeString(str(secrets[name], "data", key))
		if err != nil || len(b) == 0 {
			t.Fatalf("Secret %s key %s: %v (empty or missing)", name, key, err)
		}
		return b
	}
	volumes := map[string]any{}
	for _, v := range at(pod, "volumes").([]any) {
		volumes[str(v, "name")] = v
	}
	shared := filepath.Join(tmp, "repository-volume") // the ReadWriteMany claim
	if err := os.Mkdir(shared, 0o700); err != nil {
		t.Fatal(err)
	}

	prefix := testredis.Prefix(t) // one store for both

	// podEnv lays out one pod's volumes under its own root, and returns its
	// environment.
	podEnv := func(root string) []string {
		mounts := at(c, "volumeMounts").([]any)
		sort.Slice(mounts, func(i, j int) bool { return len(str(mounts[i], "mountPath")) < len(str(mounts[j], "mountPath")) })
		for _, m := range mounts {
			dir := filepath.Join(root, str(m, "mountPath"))
			v := volumes[str(m, "name")]
			switch {
			case at(v, "emptyDir") != nil:
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
			case at(v, "persistentVolumeClaim") != nil:
				if err := os.Symlink(shared, dir); err != nil {
					t.Fatal(err)
				}
			case at(v, "secret") != nil:
				name := str(v, "secret", "secretName")
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				for key := range at(secrets[name], "data").(map[string]any) {
					if err := os.WriteFile(filepath.Join(dir, key), secretFile(name, key), 0o440); err != nil {
						t.Fatal(err)
					}
				}
				if err := os.Chmod(dir, 0o500); err != nil { // read-only, as the mount is
					t.Fatal(err)
				}
				t.Cleanup(func() { os.Chmod(dir, 0o700) }) // so that TempDir can remove it
			default:
				t.Fatalf("volume %v: a kind the test does not lay out", v)
			}
		}
		env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "FERRY_") })
		for _, e := range at(c, "env").([]any) {
			name, value := str(e, "name"), str(e, "value")
			if ref := at(e, "valueFrom", "secretKeyRef"); ref != nil {
				value = string(secretFile(str(ref, "name"), str(ref, "key")))
			}
			switch {
			case name == "FERRY_API_ADDR" || name == "FERRY_DEVICE_ADDR":
				value = freeAddr(t) // loopback, not every interface
			case name == "FERRY_REDIS_PREFIX":
				value = prefix
			case strings.HasPrefix(value, "/"):
				value = filepath.Join(root, value)
			}
			env = append(env, name+"="+value)
		}
		return env
	}
	var pods []*exec.Cmd
	var apis []string
	for i := range 2 {
		env := podEnv(filepath.Join(tmp, "pod"+string(rune('a'+i))))
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, "FERRY_API_ADDR="); ok {
				apis = append(apis, v)
			}
		}
		cmd := exec.Command(bin)
		cmd.Env = env
		logs, err := os.Create(filepath.Join(tmp, "ferryd-"+string(rune('a'+i))+".log"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { logs.Close() })
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		pods = append(pods, cmd)
	}

	// The probes, as the kubelet sends them: HTTPS, certificate not verified.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	probe := func(api, path string) int {
		resp, err := client.Get("https://" + api + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i, api := range apis {
		for deadline := time.Now().Add(30 * time.Second); probe(api, "/readyz") != http.StatusOK; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(filepath.Join(tmp, "ferryd-"+string(rune('a'+i))+".log"))
				t.Fatalf("pod %d never ready on %s/readyz; its log:\n%s", i, api, log)
			}
		}
	}
	for _, p := range []string{"poda", "podb"} {
		entries, err := os.ReadDir(filepath.Join(tmp, p, "var/lib/ferry/tuf-keys"))
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if err != nil || !slices.Equal(names, []string{"snapshot.pem", "timestamp.pem"}) {
			t.Errorf("%s tuf-keys: %v, %v: want the Secret's two keys and nothing written", p, names, err)
		}
	}

	// Stopping: 503 on both probes while it keeps serving, then an exit
	// well within the grace period.
	grace := time.Duration(at(pod, "terminationGracePeriodSeconds").(int)) * time.Second
	start := time.Now()
	if err := pods[0].Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Second); probe(apis[0], "/healthz") != http.StatusServiceUnavailable; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("/healthz did not turn 503 after SIGTERM")
		}
	}
	if got := probe(apis[0], "/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz while stopping: %d, want 503", got)
	}
	done := make(chan error, 1)
	go func() { done <- pods[0].Wait() }()
	select {
	case err := <-done:
		if took := time.Since(start); err != nil || took > grace {
			t.Errorf("ferryd exited after %v (%v): want a clean exit within terminationGracePeriodSeconds %v", took, err, grace)
		}
	case <-time.After(grace + 5*time.Second):
		t.Fatalf("ferryd still running %v after SIGTERM; the kubelet would kill it at %v", grace+5*time.Second, grace)
	}
	if got := probe(apis[1], "/readyz"); got != http.StatusOK {
		t.Errorf("the other pod's /readyz: %d, want 200", got)
	}
}
