package deploy

import (
	"bufio"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// instruction is one Dockerfile instruction of a build stage.
type instruction struct {
	cmd   string // upper case
	args  string
	stage int // 0 for the first FROM's stage
}

// parseDockerfile reads the Dockerfile's instructions, joining continued
// lines and dropping comments.
func parseDockerfile(t *testing.T) []instruction {
	t.Helper()
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		out     []instruction
		pending string
		stage   = -1
	)
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		line := strings.TrimSpace(lines.Text())
		if strings.HasPrefix(line, "#") || (line == "" && pending == "") {
			continue
		}
		if cont, ok := strings.CutSuffix(line, "\\"); ok {
			pending += cont + " "
			continue
		}
		line, pending = pending+line, ""
		cmd, args, _ := strings.Cut(line, " ")
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			stage++
		}
		out = append(out, instruction{cmd: cmd, args: strings.TrimSpace(args), stage: stage})
	}
	if err := lines.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// image is what the final stage of the Dockerfile says about the image.
type image struct {
	base        string
	user        string
	env         map[string]string
	volumes     []string
	copies      []string // COPY arguments
	healthcheck []string // CMD, exec form
	entrypoint  []string
	buildRuns   []string // RUN of the build stages
}

func readImage(t *testing.T) image {
	t.Helper()
	ins := parseDockerfile(t)
	last := ins[len(ins)-1].stage
	img := image{env: map[string]string{}}
	for _, in := range ins {
		if in.stage != last {
			if in.cmd == "RUN" {
				img.buildRuns = append(img.buildRuns, in.args)
			}
			continue
		}
		switch in.cmd {
		case "FROM":
			img.base = in.args
		case "USER":
			img.user = in.args
		case "ENV":
			for _, kv := range strings.Fields(in.args) {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					t.Fatalf("ENV %q: want KEY=VALUE pairs", in.args)
				}
				img.env[k] = v
			}
		case "VOLUME":
			img.volumes = append(img.volumes, strings.Fields(in.args)...)
		case "COPY":
			img.copies = append(img.copies, in.args)
		case "HEALTHCHECK":
			_, cmd, ok := strings.Cut(in.args, "CMD ")
			if !ok || json.Unmarshal([]byte(cmd), &img.healthcheck) != nil {
				t.Fatalf("HEALTHCHECK %q: want CMD in exec (JSON) form", in.args)
			}
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(in.args), &img.entrypoint); err != nil {
				t.Fatalf("ENTRYPOINT %q: want exec (JSON) form", in.args)
			}
		}
	}
	return img
}

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// rootfs runs the image's build steps (deploy/rootfs.sh, as the
// Dockerfile's build stage does) once into a temporary root.
func rootfs(t *testing.T) string {
	t.Helper()
	rootOnce.Do(func() {
		if rootDir, rootErr = os.MkdirTemp("", "ferryd-rootfs-"); rootErr != nil {
			return
		}
		cmd := exec.Command("sh", "deploy/rootfs.sh", rootDir)
		cmd.Dir = ".." // the repository root, as in the build stage
		out, err := cmd.CombinedOutput()
		if err != nil {
			rootErr = fmt.Errorf("sh deploy/rootfs.sh: %v\n%s", err, out)
		}
	})
	if rootErr != nil {
		t.Fatal(rootErr)
	}
	return rootDir
}

// TestImage: the Dockerfile's build stage runs rootfs.sh, whose tree has a
// static, trimmed ferryd and a data directory the final stage copies owned
// by the image's user; the image's HEALTHCHECK, run against that binary
// started with the image's environment, passes.
func TestImage(t *testing.T) {
	img := readImage(t)
	if !slices.Contains(img.buildRuns, "sh deploy/rootfs.sh /out") {
		t.Fatalf("the build stage does not run deploy/rootfs.sh /out (RUN %q): the test would check other steps than the image's", img.buildRuns)
	}

	// The user, the data directory and its owner.
	const uid = "65532" // distroless "nonroot"
	if !strings.HasSuffix(img.base, ":nonroot") || img.user != uid+":"+uid {
		t.Errorf("final stage FROM %q USER %q: want a :nonroot base and USER %s:%s", img.base, img.user, uid, uid)
	}
	dataDir := img.env["FERRY_DATA_DIR"]
	if dataDir == "" || !slices.Equal(img.volumes, []string{dataDir}) {
		t.Errorf("FERRY_DATA_DIR %q, VOLUME %q: want the data directory to be the volume", dataDir, img.volumes)
	}
	wantCopy := fmt.Sprintf("--from=build --chown=%s:%s /out%s/ %s/", uid, uid, path.Dir(dataDir), path.Dir(dataDir))
	if !slices.Contains(img.copies, wantCopy) {
		t.Errorf("COPY %q: want %q, so that the data directory belongs to the image's user", img.copies, wantCopy)
	}
	binary := ""
	for _, c := range img.copies {
		if f := strings.Fields(c); len(f) == 3 && f[0] == "--from=build" && strings.HasPrefix(f[1], "/out/") && strings.HasSuffix(f[2], "/ferryd") {
			binary = f[2]
			if f[1] != "/out"+binary {
				t.Errorf("COPY %q: the binary is copied from elsewhere than where rootfs.sh puts it", c)
			}
		}
	}
	if binary == "" || !slices.Equal(img.entrypoint, []string{binary}) {
		t.Fatalf("ENTRYPOINT %q, binary %q: want the copied ferryd", img.entrypoint, binary)
	}
	if len(img.healthcheck) < 2 || img.healthcheck[0] != binary || img.healthcheck[1] != "healthcheck" {
		t.Fatalf("HEALTHCHECK CMD %q: want [%q, \"healthcheck\", ...]", img.healthcheck, binary)
	}

	// The tree rootfs.sh built.
	root := rootfs(t)
	bin := filepath.Join(root, binary)
	st, err := os.Stat(bin)
	if err != nil || st.Mode().Perm()&0o111 == 0 {
		t.Fatalf("%s: %v, mode %v: want an executable", binary, err, st.Mode())
	}
	exe, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range exe.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("ferryd is dynamically linked; the distroless static image has no libc")
		}
	}
	if exe.Section(".symtab") != nil {
		t.Error("ferryd is not stripped (-ldflags='-s -w')")
	}
	exe.Close()
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("build settings CGO_ENABLED=%q -trimpath=%q: want 0 and true", settings["CGO_ENABLED"], settings["-trimpath"])
	}
	data := filepath.Join(root, dataDir)
	if st, err := os.Stat(data); err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Fatalf("%s: %v: want a directory, mode 0700", dataDir, err)
	}

	// Run it as the image would (its environment, on loopback ports of
	// the test), and probe it with the image's HEALTHCHECK.
	env := os.Environ()
	for k, v := range img.env {
		switch k {
		case "FERRY_DATA_DIR":
			v = data
		case "FERRY_API_ADDR", "FERRY_DEVICE_ADDR":
			v = freeAddr(t)
		}
		env = append(env, k+"="+v)
	}
	ferryd := exec.Command(bin)
	ferryd.Env = env
	logs, err := os.Create(filepath.Join(t.TempDir(), "ferryd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	ferryd.Stdout, ferryd.Stderr = logs, logs
	if err := ferryd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ferryd.Process.Kill(); ferryd.Wait() })
	var last string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		check := exec.Command(bin, img.healthcheck[1:]...)
		check.Env = env
		out, err := check.CombinedOutput()
		if err == nil {
			break
		}
		last = fmt.Sprintf("%v: %s", err, out)
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logs.Name())
			t.Fatalf("HEALTHCHECK never passed: %s\nferryd's log:\n%s", last, log)
		}
	}
	if _, err := os.Stat(filepath.Join(data, "ferry.db")); err != nil {
		t.Errorf("ferryd did not use the image's data directory: %v", err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// composeFile is the part of compose.yaml the test reads (merge keys
// resolved by the YAML decoder).
type composeFile struct {
	Services map[string]struct {
		Image string `yaml:"image"`
		Build struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
		Ports       []string          `yaml:"ports"`
		DependsOn   map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
		Healthcheck map[string]any `yaml:"healthcheck"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

// TestCompose: the compose file runs at least two ferryd that share one
// store, one repository and the same online keys (one named volume as the
// data directory), the same TLS material, operator keys and device issuer,
// with variables ferryd knows, and distinct host ports; the second starts
// after the first is healthy, so that the first creates the keys.
func TestCompose(t *testing.T) {
	raw, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	img := readImage(t)
	var ferryds []string
	for name, s := range c.Services {
		if s.Build.Dockerfile == "deploy/Dockerfile" {
			ferryds = append(ferryds, name)
		}
	}
	slices.Sort(ferryds)
	if len(ferryds) < 2 {
		t.Fatalf("ferryd services %q: want at least two", ferryds)
	}

	// Every variable is one ferryd reads (its help lists them).
	help, _ := exec.Command(filepath.Join(rootfs(t), img.entrypoint[0]), "-h").CombinedOutput()
	first := c.Services[ferryds[0]]
	same := []string{"FERRY_REDIS_URL", "FERRY_REDIS_PREFIX", "FERRY_REPOSITORY_URL", "FERRY_TRUST_DOMAIN",
		"FERRY_TLS_CERT", "FERRY_TLS_KEY", "FERRY_DEVICE_CA", "FERRY_OPERATOR_KEYS",
		"FERRY_DEVICE_ISSUER_CERT", "FERRY_DEVICE_ISSUER_KEY", "FERRY_DATA_DIR"}
	ports := map[string]string{}
	for _, name := range ferryds {
		s := c.Services[name]
		for k, v := range s.Environment {
			if !strings.Contains(string(help), "[$"+k+"]") {
				t.Errorf("%s: %s is not a ferryd variable", name, k)
			}
			if strings.HasPrefix(v, "/secrets/") && !mounted(s.Volumes, "/secrets", v) {
				t.Errorf("%s: %s=%s is not in a mounted volume", name, k, v)
			}
		}
		for _, k := range same {
			if s.Environment[k] != first.Environment[k] {
				t.Errorf("%s: %s=%q, %s has %q: instances must share it", name, k, s.Environment[k], ferryds[0], first.Environment[k])
			}
		}
		for _, k := range []string{"FERRY_TLS_CERT", "FERRY_TLS_KEY", "FERRY_DEVICE_CA", "FERRY_OPERATOR_KEYS", "FERRY_DEVICE_ISSUER_CERT", "FERRY_DEVICE_ISSUER_KEY"} {
			if s.Environment[k] == "" {
				t.Errorf("%s: %s is not set (a shared deployment gives its own credentials and a device issuer, so enrollment works)", name, k)
			}
		}
		// One store: the Redis of this file.
		redisHost := strings.Split(strings.TrimPrefix(s.Environment["FERRY_REDIS_URL"], "redis://"), ":")[0]
		if _, ok := c.Services[redisHost]; !ok {
			t.Errorf("%s: FERRY_REDIS_URL=%q does not name a service of the file", name, s.Environment["FERRY_REDIS_URL"])
		}
		if _, ok := s.DependsOn[redisHost]; !ok {
			t.Errorf("%s: does not depend on %s", name, redisHost)
		}
		// One data directory: the same named volume (repository/ and
		// tuf-keys/ are in it, unless FERRY_REPOSITORY_URL names a shared
		// blob store, which the check above makes the same).
		dataDir := img.env["FERRY_DATA_DIR"]
		if v := s.Environment["FERRY_DATA_DIR"]; v != "" {
			dataDir = v
		}
		vol := volumeAt(s.Volumes, dataDir)
		if _, named := c.Volumes[vol]; vol == "" || !named {
			t.Errorf("%s: the data directory %s is not a named volume (volumes %q)", name, dataDir, s.Volumes)
		}
		if firstVol := volumeAt(first.Volumes, dataDir); vol != firstVol {
			t.Errorf("%s: data directory on volume %q, %s on %q: instances must share the repository and online keys", name, vol, ferryds[0], firstVol)
		}
		for _, p := range s.Ports {
			host, _, _ := strings.Cut(p, ":")
			if other, dup := ports[host]; dup {
				t.Errorf("host port %s is published by %s and %s", host, other, name)
			}
			ports[host] = name
		}
	}
	for _, name := range ferryds[1:] {
		if c.Services[name].DependsOn[ferryds[0]].Condition != "service_healthy" {
			t.Errorf("%s: want depends_on %s with condition service_healthy (it creates the online keys on first start)", name, ferryds[0])
		}
	}
}

// volumeAt returns the source of the volume mounted at target.
func volumeAt(volumes []string, target string) string {
	for _, v := range volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == target {
			return parts[0]
		}
	}
	return ""
}

// mounted reports whether file lies under a volume mounted at dir.
func mounted(volumes []string, dir, file string) bool {
	return volumeAt(volumes, dir) != "" && strings.HasPrefix(file, dir+"/")
}
