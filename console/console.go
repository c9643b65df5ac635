// Package console is the operator console's front end: a single page with
// plain JavaScript modules and a stylesheet, embedded in the binary. It
// calls ferryd's Connect API like any other client; ferryd serves it at /
// on the API port with its security headers (see server.Config.Console).
package console

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

//go:embed web
var embedded embed.FS

// FS holds the console's assets: index.html at its root.
var FS fs.FS = mustSub(embedded, "web")

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic(err)
	}
	return sub
}

// contentTypes are the assets' content types, set explicitly so they do
// not depend on the host's MIME tables.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

// Handler serves the assets: "/" is index.html, other paths are files of
// FS (not found otherwise). Security headers are the caller's.
func Handler() http.Handler {
	files := http.FileServerFS(FS)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ext := path.Ext(r.URL.Path)
		if r.URL.Path == "/" || strings.HasSuffix(r.URL.Path, "/") {
			ext = ".html"
		}
		if t, ok := contentTypes[ext]; ok {
			w.Header().Set("Content-Type", t)
		}
		files.ServeHTTP(w, r)
	})
}
