package console

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"path"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, p string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
	return rec.Result()
}

func assets(t *testing.T) []string {
	t.Helper()
	var files []string
	err := fs.WalkDir(FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// Every asset is served with the content type its extension calls for.
func TestAssetsServedWithContentType(t *testing.T) {
	want := map[string]string{
		".html": "text/html; charset=utf-8",
		".js":   "text/javascript; charset=utf-8",
		".css":  "text/css; charset=utf-8",
		".svg":  "image/svg+xml",
	}
	h := Handler()
	files := assets(t)
	if len(files) < 10 {
		t.Fatalf("only %d assets embedded: %v", len(files), files)
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			p := "/" + f
			if f == "index.html" {
				p = "/"
			}
			res := get(t, h, p)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s", p, res.Status)
			}
			typ, ok := want[path.Ext(f)]
			if !ok {
				t.Fatalf("no content type known for %s", f)
			}
			if got := res.Header.Get("Content-Type"); got != typ {
				t.Errorf("GET %s: Content-Type %q, want %q", p, got, typ)
			}
		})
	}
}

func TestUnknownPathNotFound(t *testing.T) {
	for _, p := range []string{"/nope.js", "/pages/none.js", "/../console.go"} {
		if res := get(t, Handler(), p); res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", p, res.Status)
		}
	}
}

var (
	inlineScript  = regexp.MustCompile(`(?is)<script\b[^>]*>\s*[^<\s]`)
	styleTag      = regexp.MustCompile(`(?i)<style\b`)
	styleAttr     = regexp.MustCompile(`(?i)\sstyle\s*=`)
	handlerAttr   = regexp.MustCompile(`(?i)\son[a-z]+\s*=`)
	externalURL   = regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//`)
	jsImport      = regexp.MustCompile(`(?m)^\s*(?:import|export)\b[^'"]*?from\s+['"]([^'"]+)['"]`)
	htmlReference = regexp.MustCompile(`(?i)(?:src|href)="([^"#]+)"`)
)

// index.html has nothing the console's Content-Security-Policy would
// block: no inline script or style, no event handler attributes, nothing
// from another origin.
func TestIndexHasNothingInline(t *testing.T) {
	b, err := fs.ReadFile(FS, "index.html")
	if err != nil {
		t.Fatal(err)
	}
	html := string(b)
	for name, re := range map[string]*regexp.Regexp{
		"inline script": inlineScript, "style element": styleTag, "style attribute": styleAttr,
		"event handler attribute": handlerAttr, "external URL": externalURL,
	} {
		if m := re.FindString(html); m != "" {
			t.Errorf("index.html has an %s: %q", name, m)
		}
	}
	if !strings.Contains(html, `<script type="module" src="app.js"></script>`) {
		t.Error("index.html does not load app.js as a module")
	}
}

// Every file index.html and the modules reference is embedded, and no
// module fetches from another origin or builds HTML from strings.
func TestReferencesExist(t *testing.T) {
	b, _ := fs.ReadFile(FS, "index.html")
	for _, m := range htmlReference.FindAllStringSubmatch(string(b), -1) {
		if _, err := fs.Stat(FS, strings.TrimPrefix(m[1], "/")); err != nil {
			t.Errorf("index.html references %s: %v", m[1], err)
		}
	}
	modules := 0
	for _, f := range assets(t) {
		if path.Ext(f) != ".js" {
			continue
		}
		modules++
		src, err := fs.ReadFile(FS, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range jsImport.FindAllStringSubmatch(string(src), -1) {
			ref := path.Join(path.Dir(f), m[1])
			if !strings.HasPrefix(m[1], ".") {
				t.Errorf("%s imports %q: only relative imports of embedded modules", f, m[1])
			} else if _, err := fs.Stat(FS, ref); err != nil {
				t.Errorf("%s imports %s, which is not embedded", f, m[1])
			}
		}
		text := strings.ReplaceAll(string(src), "http://www.w3.org/2000/svg", "")
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "http://", "https://", "localStorage"} {
			if strings.Contains(text, bad) {
				t.Errorf("%s uses %s", f, bad)
			}
		}
	}
	if modules < 8 {
		t.Errorf("only %d modules", modules)
	}
}

// The page reads fine as text: GET / answers index.html itself.
func TestRootIsIndex(t *testing.T) {
	res := get(t, Handler(), "/")
	b, _ := io.ReadAll(res.Body)
	if !strings.Contains(string(b), "Ferry console") {
		t.Errorf("GET / does not answer index.html: %.200s", b)
	}
}
