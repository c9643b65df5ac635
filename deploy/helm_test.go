package deploy

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The chart, its value sets for the tests (ci/, left out of the packaged
// chart) and the Kubernetes release its manifests are checked against:
// the OpenAPI document of that release (api/openapi-spec/swagger.json of
// the k8s.io/kubernetes module, from the Go module proxy) becomes the JSON
// schemas kubeconform reads, since its usual schemas are fetched from a
// web site rather than a package registry.
const (
	chartDir           = "helm/ferry"
	kubeVersion        = "1.37.0"
	kubernetesModule   = "k8s.io/kubernetes@v1.37.2"
	toolsModfileFlag   = "-modfile=tools/go.mod"
	openAPIInTheModule = "api/openapi-spec/swagger.json"
	// The ServiceMonitor's schema: the CRD of the Prometheus Operator
	// release, from its module.
	prometheusOperatorModule = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
	serviceMonitorCRD        = "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
)

// goTool runs a tool pinned in tools/go.mod (go tool -modfile=…) from the
// repository root, and returns its standard output; a failure carries its
// standard error.
func goTool(stdin io.Reader, name string, args ...string) ([]byte, error) {
	cmd := exec.Command("go", append([]string{"tool", toolsModfileFlag, name}, args...)...)
	cmd.Dir = ".."
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("go tool %s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

func helm(args ...string) ([]byte, error) { return goTool(nil, "helm", args...) }

// manifest is one rendered object, as a generic tree.
type manifest map[string]any

func (m manifest) kind() string { s, _ := m["kind"].(string); return s }
func (m manifest) name() string { return str(m, "metadata", "name") }

// at walks maps by key and lists by index (an int key).
func at(v any, path ...any) any {
	if m, ok := v.(manifest); ok {
		v = map[string]any(m)
	}
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any, path ...any) string {
	s, _ := at(v, path...).(string)
	return s
}

// render runs helm template with the value files and --set flags (a set
// "@key=path" is --set-file key=path), and returns the raw stream and its
// objects.
func render(t *testing.T, values []string, sets []string) ([]byte, []manifest) {
	t.Helper()
	args := []string{"template", "ferry", "deploy/" + chartDir, "--namespace", "fleet", "--kube-version", kubeVersion}
	for _, v := range values {
		args = append(args, "-f", "deploy/"+chartDir+"/ci/"+v)
	}
	for _, s := range sets {
		if file, ok := strings.CutPrefix(s, "@"); ok {
			args = append(args, "--set-file", file)
		} else {
			args = append(args, "--set", s)
		}
	}
	out, err := helm(args...)
	if err != nil {
		t.Fatal(err)
	}
	var objs []manifest
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var m map[string]any // not manifest: yaml.v3 would give nested maps that type too
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("helm template output: %v", err)
		}
		if m != nil {
			objs = append(objs, manifest(m))
		}
	}
	return out, objs
}

// TestMain removes what the tests made once for all of them: the schemas
// and the image's file tree.
func TestMain(m *testing.M) {
	code := m.Run()
	for _, dir := range []string{schemaDir, rootDir} {
		if dir != "" {
			os.RemoveAll(dir)
		}
	}
	os.Exit(code)
}

var (
	schemaOnce sync.Once
	schemaDir  string
	schemaErr  error
)

// kubeSchemas writes, once per run, a strict standalone JSON schema per
// kind of the Kubernetes release (as openapi2jsonschema --strict does:
// references inlined, additionalProperties false wherever properties are
// listed, int-or-string and quantities as either form) and returns
// kubeconform's -schema-location template for them.
func kubeSchemas(t *testing.T) string {
	t.Helper()
	schemaOnce.Do(func() {
		schemaDir, schemaErr = writeKubeSchemas()
	})
	if schemaErr != nil {
		t.Fatal(schemaErr)
	}
	return filepath.Join(schemaDir, "{{ .ResourceKind }}{{ .KindSuffix }}.json")
}

// moduleDir downloads a module (outside the repository, so that no go.sum
// is touched; the module cache keeps it for later runs) and returns its
// directory.
func moduleDir(module string) (string, error) {
	cmd := exec.Command("go", "mod", "download", "-json", module)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s: %v\n%s", module, err, out)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return "", fmt.Errorf("go mod download %s: %v %s\n%s", module, err, mod.Error, out)
	}
	return mod.Dir, nil
}

func writeKubeSchemas() (string, error) {
	kube, err := moduleDir(kubernetesModule)
	if err != nil {
		return "", err
	}
	raw, err := os.ReadFile(filepath.Join(kube, openAPIInTheModule))
	if err != nil {
		return "", err
	}
	var spec struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	if err := json.Unmarshal(raw, &spec); err != nil {
		return "", fmt.Errorf("%s: %w", openAPIInTheModule, err)
	}
	dir, err := os.MkdirTemp("", "ferry-kube-schemas-")
	if err != nil {
		return "", err
	}
	for name, def := range spec.Definitions {
		gvks, _ := def["x-kubernetes-group-version-kind"].([]any)
		for _, g := range gvks {
			gvk, _ := g.(map[string]any)
			group, _ := gvk["group"].(string)
			version, _ := gvk["version"].(string)
			kind, _ := gvk["kind"].(string)
			// kubeconform's {{ .KindSuffix }}: -<first label of the group>-<version>, or -<version> for the core group.
			suffix := "-" + version
			if group != "" {
				suffix = "-" + strings.Split(group, ".")[0] + "-" + version
			}
			schema := inline(spec.Definitions, name, map[string]bool{})
			b, err := json.Marshal(schema)
			if err != nil {
				return "", err
			}
			if err := os.WriteFile(filepath.Join(dir, strings.ToLower(kind+suffix)+".json"), b, 0o600); err != nil {
				return "", err
			}
		}
	}

	// The ServiceMonitor: each served version's openAPIV3Schema, strict
	// likewise.
	po, err := moduleDir(prometheusOperatorModule)
	if err != nil {
		return "", err
	}
	raw, err = os.ReadFile(filepath.Join(po, serviceMonitorCRD))
	if err != nil {
		return "", err
	}
	var crd map[string]any
	if err := yaml.Unmarshal(raw, &crd); err != nil {
		return "", fmt.Errorf("%s: %w", serviceMonitorCRD, err)
	}
	group, kind := str(crd, "spec", "group"), str(crd, "spec", "names", "kind")
	versions, _ := at(crd, "spec", "versions").([]any)
	for _, v := range versions {
		schema := at(v, "schema", "openAPIV3Schema")
		if schema == nil || group == "" || kind == "" {
			return "", fmt.Errorf("%s: no group, kind or schema", serviceMonitorCRD)
		}
		b, err := json.Marshal(expand(nil, schema, map[string]bool{}))
		if err != nil {
			return "", err
		}
		name := strings.ToLower(kind + "-" + strings.Split(group, ".")[0] + "-" + str(v, "name"))
		if err := os.WriteFile(filepath.Join(dir, name+".json"), b, 0o600); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// inline returns definition name with every $ref replaced by what it
// names; a reference back into its own chain (only in CRD schemas) admits
// anything.
func inline(defs map[string]map[string]any, name string, onPath map[string]bool) any {
	switch name {
	case "io.k8s.apimachinery.pkg.util.intstr.IntOrString":
		return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}}
	case "io.k8s.apimachinery.pkg.api.resource.Quantity":
		return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "number"}}}
	}
	if onPath[name] {
		return map[string]any{}
	}
	onPath[name] = true
	defer delete(onPath, name)
	return expand(defs, defs[name], onPath)
}

func expand(defs map[string]map[string]any, v any, onPath map[string]bool) any {
	switch x := v.(type) {
	case map[string]any:
		if ref, ok := x["$ref"].(string); ok {
			return inline(defs, strings.TrimPrefix(ref, "#/definitions/"), onPath)
		}
		out := make(map[string]any, len(x)+1)
		for k, e := range x {
			if k == "properties" {
				props := map[string]any{}
				for p, s := range e.(map[string]any) {
					props[p] = expand(defs, s, onPath)
				}
				out[k] = props
				continue
			}
			out[k] = expand(defs, e, onPath)
		}
		if _, ok := x["properties"]; ok && x["x-kubernetes-preserve-unknown-fields"] != true {
			if _, set := x["additionalProperties"]; !set {
				out["additionalProperties"] = false
			}
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = expand(defs, e, onPath)
		}
		return out
	}
	return v
}

// kubeconform checks a manifest stream against the schemas strictly
// (unknown fields and duplicate keys are errors); a kind without a schema
// is an error too.
func kubeconform(t *testing.T, stream []byte) error {
	t.Helper()
	_, err := goTool(bytes.NewReader(stream), "kubeconform", "-strict", "-summary",
		"-kubernetes-version", kubeVersion, "-schema-location", kubeSchemas(t), "-")
	return err
}

// TestHelmChart: helm lint passes and helm template renders the chart for
// each supported Redis form (one server, Cluster, Sentinel), with and
// without a ServiceMonitor; every rendered object passes kubeconform
// against the Kubernetes schemas; and the Deployment runs ferryd as the
// image and docs/operations.md say: its variables, probes, Secrets,
// shared repository, security context and shutdown timing.
func TestHelmChart(t *testing.T) {
	help, _ := exec.Command(filepath.Join(rootfs(t), "usr/local/bin/ferryd"), "-h").CombinedOutput()
	tests := []struct {
		name           string
		values         []string
		sets           []string
		redisScheme    string // of the URL in a Secret the chart made; "" when an existing Secret holds it
		repositoryURL  string // FERRY_REPOSITORY_URL, or "" for the shared volume
		serviceMonitor bool
	}{
		{name: "one Redis server", values: []string{"single-values.yaml"}, redisScheme: "redis://"},
		{name: "Redis Cluster, S3 repository", values: []string{"cluster-values.yaml"}, repositoryURL: "s3://ferry-repository?region=eu-west-1"},
		{name: "Redis Cluster with a ServiceMonitor", values: []string{"cluster-values.yaml"},
			sets:           []string{"serviceMonitor.enabled=true", "serviceMonitor.tokenSecret.name=ferry-metrics-token"},
			repositoryURL:  "s3://ferry-repository?region=eu-west-1",
			serviceMonitor: true},
		{name: "Sentinel with a ServiceMonitor", values: []string{"sentinel-values.yaml"}, redisScheme: "redis+sentinel://", serviceMonitor: true},
		{name: "Sentinel without a ServiceMonitor", values: []string{"sentinel-values.yaml"}, sets: []string{"serviceMonitor.enabled=false"}, redisScheme: "redis+sentinel://"},
		{name: "cluster URL in a Secret the chart makes", values: []string{"single-values.yaml"},
			sets:        []string{"redis.url=rediss+cluster://ferry:s3cret@redis-0:6379\\,redis-1:6379\\,redis-2:6379/"},
			redisScheme: "rediss+cluster://"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lint := []string{"lint", "--strict", "--kube-version", kubeVersion, "deploy/" + chartDir}
			for _, v := range tc.values {
				lint = append(lint, "-f", "deploy/"+chartDir+"/ci/"+v)
			}
			for _, s := range tc.sets {
				lint = append(lint, "--set", s)
			}
			if out, err := helm(lint...); err != nil {
				t.Fatal(err)
			} else if !bytes.Contains(out, []byte("0 chart(s) failed")) {
				t.Fatalf("helm lint:\n%s", out)
			}

			stream, objs := render(t, tc.values, tc.sets)
			if err := kubeconform(t, stream); err != nil {
				t.Fatal(err)
			}
			byKind := map[string][]manifest{}
			secrets := map[string]manifest{}
			for _, o := range objs {
				byKind[o.kind()] = append(byKind[o.kind()], o)
				if o.kind() == "Secret" {
					secrets[o.name()] = o
				}
			}
			if n := len(byKind["Deployment"]); n != 1 {
				t.Fatalf("%d Deployments, want 1", n)
			}
			dep := byKind["Deployment"][0]
			pod := at(dep, "spec", "template", "spec")
			c := at(pod, "containers", 0)
			env := map[string]any{}
			for _, e := range at(c, "env").([]any) {
				name := str(e, "name")
				env[name] = e
				if strings.HasPrefix(name, "FERRY_") && !strings.Contains(string(help), "[$"+name+"]") {
					t.Errorf("%s is not a ferryd variable", name)
				}
			}
			value := func(name string) string { return str(env[name], "value") }

			// Ports, probes and Services: one Service per port.
			ports := map[string]int{}
			for _, p := range at(c, "ports").([]any) {
				ports[str(p, "name")] = at(p, "containerPort").(int)
			}
			if value("FERRY_API_ADDR") != fmt.Sprintf(":%d", ports["api"]) || value("FERRY_DEVICE_ADDR") != fmt.Sprintf(":%d", ports["device"]) {
				t.Errorf("FERRY_API_ADDR %q, FERRY_DEVICE_ADDR %q, container ports %v", value("FERRY_API_ADDR"), value("FERRY_DEVICE_ADDR"), ports)
			}
			for probe, path := range map[string]string{"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
				if got := at(c, probe, "httpGet"); str(got, "path") != path || str(got, "port") != "api" || str(got, "scheme") != "HTTPS" {
					t.Errorf("%s %v: want GET %s on the API port over HTTPS", probe, got, path)
				}
			}
			svcPorts := map[string]string{}
			for _, s := range byKind["Service"] {
				if len(at(s, "spec", "ports").([]any)) != 1 {
					t.Errorf("Service %s: want one port", s.name())
				}
				svcPorts[str(s, "spec", "ports", 0, "targetPort")] = s.name()
				for k, v := range at(s, "spec", "selector").(map[string]any) {
					if str(dep, "spec", "template", "metadata", "labels", k) != v {
						t.Errorf("Service %s selects %s=%v, which the pods do not carry", s.name(), k, v)
					}
				}
			}
			if len(svcPorts) != 2 || svcPorts["api"] == "" || svcPorts["device"] == "" {
				t.Errorf("Services by target port %v: want one for api and one for device", svcPorts)
			}

			// Redis by URL, from a Secret.
			ref := at(env["FERRY_REDIS_URL"], "valueFrom", "secretKeyRef")
			if ref == nil {
				t.Fatalf("FERRY_REDIS_URL %v: want it from a Secret", env["FERRY_REDIS_URL"])
			}
			if tc.redisScheme != "" {
				s := secrets[str(ref, "name")]
				url, err := base64.StdEncoding.DecodeString(str(s, "data", str(ref, "key")))
				if s == nil || err != nil || !strings.HasPrefix(string(url), tc.redisScheme) {
					t.Errorf("Redis URL Secret %v key %s: %q, %v; want a %s URL", str(ref, "name"), str(ref, "key"), url, err, tc.redisScheme)
				}
			} else if secrets[str(ref, "name")] != nil {
				t.Errorf("the chart made the Redis Secret %s although the values name an existing one", str(ref, "name"))
			}

			// Every file variable is in a mounted Secret volume, read-only,
			// and the online keys are <data-dir>/tuf-keys.
			mounts := map[string]string{} // mount path → volume
			for _, m := range at(c, "volumeMounts").([]any) {
				mounts[str(m, "mountPath")] = str(m, "name")
				if strings.HasPrefix(str(m, "mountPath"), "/etc/ferry/") && at(m, "readOnly") != true {
					t.Errorf("mount %s: want readOnly", str(m, "mountPath"))
				}
			}
			volumes := map[string]any{}
			for _, v := range at(pod, "volumes").([]any) {
				volumes[str(v, "name")] = v
			}
			for _, name := range []string{"FERRY_TLS_CERT", "FERRY_TLS_KEY", "FERRY_DEVICE_CA", "FERRY_OPERATOR_KEYS", "FERRY_OPERATOR_CA", "FERRY_DEVICE_ISSUER_CERT", "FERRY_DEVICE_ISSUER_KEY", "FERRY_MANUFACTURER_CA"} {
				file := value(name)
				if file == "" {
					continue
				}
				vol := volumes[mounts[filepath.Dir(file)]]
				secret := str(vol, "secret", "secretName")
				if secret == "" {
					t.Errorf("%s=%s is not in a mounted Secret", name, file)
				} else if s := secrets[secret]; s != nil && str(s, "data", filepath.Base(file)) == "" {
					t.Errorf("%s=%s: the Secret %s the chart made has no key %s", name, file, secret, filepath.Base(file))
				}
			}
			for _, pair := range [][2]string{{"FERRY_TLS_CERT", "FERRY_TLS_KEY"}, {"FERRY_DEVICE_ISSUER_CERT", "FERRY_DEVICE_ISSUER_KEY"}} {
				if (value(pair[0]) == "") != (value(pair[1]) == "") {
					t.Errorf("%s %q and %s %q go together", pair[0], value(pair[0]), pair[1], value(pair[1]))
				}
			}
			dataDir := value("FERRY_DATA_DIR")
			if str(volumes[mounts[dataDir+"/tuf-keys"]], "secret", "secretName") == "" {
				t.Errorf("%s/tuf-keys is not a Secret: every replica must sign with the same online keys", dataDir)
			}
			if at(volumes[mounts[dataDir]], "emptyDir") == nil {
				t.Errorf("data directory %s: want an emptyDir (with Redis it holds only what is mounted below it)", dataDir)
			}

			// The shared repository: a bucket, or a ReadWriteMany claim.
			if got := value("FERRY_REPOSITORY_URL"); got != tc.repositoryURL {
				t.Errorf("FERRY_REPOSITORY_URL %q, want %q", got, tc.repositoryURL)
			}
			claim := str(volumes[mounts[dataDir+"/repository"]], "persistentVolumeClaim", "claimName")
			switch {
			case tc.repositoryURL != "" && claim != "":
				t.Errorf("repository in %s and on the claim %s", tc.repositoryURL, claim)
			case tc.repositoryURL == "" && claim == "":
				t.Errorf("no repository URL and no volume at %s/repository", dataDir)
			}
			for _, pvc := range byKind["PersistentVolumeClaim"] {
				if pvc.name() == claim && !strings.Contains(fmt.Sprint(at(pvc, "spec", "accessModes")), "ReadWriteMany") && at(dep, "spec", "replicas").(int) > 1 {
					t.Errorf("claim %s %v: replicas share it, want ReadWriteMany", claim, at(pvc, "spec", "accessModes"))
				}
			}

			// Non-root, read-only root filesystem, the image's user.
			if at(pod, "securityContext", "runAsNonRoot") != true || at(pod, "securityContext", "runAsUser") != 65532 ||
				at(c, "securityContext", "readOnlyRootFilesystem") != true || at(c, "securityContext", "allowPrivilegeEscalation") != false {
				t.Errorf("security contexts pod %v container %v: want non-root 65532, read-only root, no privilege escalation", at(pod, "securityContext"), at(c, "securityContext"))
			}
			if at(c, "resources", "requests", "cpu") == nil || at(c, "resources", "requests", "memory") == nil {
				t.Errorf("resources %v: want CPU and memory requests", at(c, "resources"))
			}

			// Stopping: the grace period covers the shutdown delay and timeout.
			delay, err1 := time.ParseDuration(value("FERRY_SHUTDOWN_DELAY"))
			timeout, err2 := time.ParseDuration(value("FERRY_SHUTDOWN_TIMEOUT"))
			grace := time.Duration(at(pod, "terminationGracePeriodSeconds").(int)) * time.Second
			if err1 != nil || err2 != nil || delay < 5*time.Second || grace <= delay+timeout+2*time.Second {
				t.Errorf("shutdown delay %q, timeout %q, terminationGracePeriodSeconds %v: want a delay of several probe periods and a grace period beyond delay + timeout + 2 s",
					value("FERRY_SHUTDOWN_DELAY"), value("FERRY_SHUTDOWN_TIMEOUT"), grace)
			}

			// The ServiceMonitor scrapes the API port's /metrics with an operator key.
			sms := byKind["ServiceMonitor"]
			if tc.serviceMonitor != (len(sms) == 1) || len(sms) > 1 {
				t.Fatalf("%d ServiceMonitors, want one: %v", len(sms), tc.serviceMonitor)
			}
			for _, sm := range sms {
				ep := at(sm, "spec", "endpoints", 0)
				if str(sm, "apiVersion") != "monitoring.coreos.com/v1" || str(ep, "port") != "api" || str(ep, "path") != "/metrics" ||
					str(ep, "scheme") != "https" || str(ep, "authorization", "credentials", "name") == "" {
					t.Errorf("ServiceMonitor endpoint %v: want https /metrics on the port named api with a bearer credential", ep)
				}
				selected := 0
				for _, s := range byKind["Service"] {
					match := true
					for k, v := range at(sm, "spec", "selector", "matchLabels").(map[string]any) {
						match = match && str(s, "metadata", "labels", k) == v
					}
					if match {
						selected++
						if str(s, "spec", "ports", 0, "name") != "api" {
							t.Errorf("the ServiceMonitor selects Service %s, which has no api port", s.name())
						}
					}
				}
				if selected != 1 {
					t.Errorf("the ServiceMonitor selects %d Services, want the API one", selected)
				}
			}
		})
	}
}

// TestHelmChartRefuses: values ferryd could not start with fail the render
// with a message that says what to give.
func TestHelmChartRefuses(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		sets   []string
		want   string
	}{
		{"no values", nil, nil, "redis.url or redis.existingSecret is required"},
		{"no Redis", []string{"single-values.yaml"}, []string{"redis.url="}, "redis.url or redis.existingSecret is required"},
		{"not a Redis URL", []string{"single-values.yaml"}, []string{"redis.url=http://redis:6379"}, `redis.url must start with redis://`},
		{"no download URL", []string{"single-values.yaml"}, []string{"downloadURL="}, "downloadURL is required"},
		{"no online keys", []string{"single-values.yaml"}, []string{"onlineKeys.timestamp="}, "onlineKeys.existingSecret or onlineKeys.timestamp is required"},
		{"issuer certificate without its key", []string{"single-values.yaml"}, []string{"deviceIssuer.cert=x"}, "deviceIssuer.cert and deviceIssuer.key go together"},
		{"replicas on a ReadWriteOnce repository", []string{"single-values.yaml"}, []string{"repository.persistence.accessModes={ReadWriteOnce}"}, "must be shared"},
		{"ServiceMonitor without a credential", []string{"single-values.yaml"}, []string{"serviceMonitor.enabled=true"}, "serviceMonitor.tokenSecret.name is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"template", "ferry", "deploy/" + chartDir, "--kube-version", kubeVersion}
			for _, v := range tc.values {
				args = append(args, "-f", "deploy/"+chartDir+"/ci/"+v)
			}
			for _, s := range tc.sets {
				args = append(args, "--set", s)
			}
			_, err := helm(args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("helm template: %v; want an error saying %q", err, tc.want)
			}
		})
	}
}

// TestKubeconformCatches: the schema check is not vacuous: a Deployment
// or ServiceMonitor with a misspelt field, or a field of the wrong type,
// fails it.
func TestKubeconformCatches(t *testing.T) {
	stream, _ := render(t, []string{"sentinel-values.yaml"}, nil)
	for name, edit := range map[string][2]string{
		"unknown field":                {"  replicas: 2\n", "  replica: 2\n"},
		"wrong type":                   {"terminationGracePeriodSeconds: 20", "terminationGracePeriodSeconds: twenty"},
		"bad nesting":                  {"readOnlyRootFilesystem: true", "readOnlyRootFilesystem: {on: true}"},
		"ServiceMonitor unknown field": {"scrapeTimeout: 10s", "scrapeTimout: 10s"},
		"ServiceMonitor wrong type":    {"scheme: https", "scheme: [https]"},
	} {
		t.Run(name, func(t *testing.T) {
			if !bytes.Contains(stream, []byte(edit[0])) {
				t.Fatalf("rendered chart has no %q to change", edit[0])
			}
			bad := bytes.Replace(stream, []byte(edit[0]), []byte(edit[1]), 1)
			if err := kubeconform(t, bad); err == nil {
				t.Fatalf("kubeconform accepted the Deployment with %q", edit[1])
			}
		})
	}
}
