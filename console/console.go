// Package console is the operator console's front end: a single page with
// plain JavaScript modules and a stylesheet, embedded in the binary. It
// calls ferryd's Connect API like any other client; ferryd serves it at /
// on the API port with its security headers (see server.Config.Console).
package console

import (
	"embed"
	"io/fs"
	"mime"
	"net/http"
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

// The content types of the assets, set explicitly so they do not depend on
// the host's MIME tables.
func init() {
	for ext, typ := range map[string]string{
		".html": "text/html; charset=utf-8",
		".js":   "text/javascript; charset=utf-8",
		".mjs":  "text/javascript; charset=utf-8",
		".css":  "text/css; charset=utf-8",
		".svg":  "image/svg+xml",
		".json": "application/json",
	} {
		_ = mime.AddExtensionType(ext, typ)
	}
}

// Handler serves the assets: "/" is index.html, other paths are files of
// FS (not found otherwise). Security headers are the caller's.
func Handler() http.Handler {
	return http.FileServerFS(FS)
}
