package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
)

// Every change the agent makes to the device's files (its state, its
// credentials, the A/B links and slots, its downloads) goes through the
// functions of this file, and each of them passes a crash point right
// after every write, rename and removal. A power loss can stop the agent
// between any two of them; the install sequence (agent.go, resume.go) is
// built so that the agent, started again, finds a consistent device
// whichever point it stopped at. Creating a directory is not a crash
// point: stopping right after it is the same as stopping before the next
// write.

// crashHook, when set (by tests only), is called at every crash point
// with the point's name ("write state.json", "rename boot", ...). A test
// stops the agent there as a power loss would: the hook never returns.
var crashHook atomic.Pointer[func(point string)]

func crashPoint(op, path string) {
	if h := crashHook.Load(); h != nil {
		(*h)(op + " " + filepath.Base(path))
	}
}

// writeFileAtomic writes data to a temporary file beside path, syncs it,
// renames it over path and syncs the directory: after a crash path holds
// the old or the new data.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	err := writeSynced(tmp, mode, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
	crashPoint("write", path)
	if err == nil {
		err = os.Rename(tmp, path)
		crashPoint("rename", path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeSynced creates (or truncates) path, lets fill write it, and syncs
// it.
func writeSynced(path string, mode os.FileMode, fill func(*os.File) error) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	err = fill(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(path, mode) // an existing file keeps its mode otherwise
	}
	return err
}

// copyFileAtomic copies from to to through a temporary file and a rename.
func copyFileAtomic(ctx context.Context, from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := to + ".tmp"
	err = writeSynced(tmp, 0o644, func(out *os.File) error {
		_, err := io.Copy(out, ctxReader{ctx, in})
		return err
	})
	crashPoint("write", tmp)
	if err == nil {
		err = os.Rename(tmp, to)
		crashPoint("rename", to)
	}
	if err == nil {
		err = syncDir(filepath.Dir(to))
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// replaceLink makes dir/name a symbolic link to target, atomically: a new
// link beside it renamed over it, then the directory synced.
func replaceLink(dir, name, target string) error {
	tmp := filepath.Join(dir, "."+name+".tmp")
	os.Remove(tmp)
	err := os.Symlink(target, tmp)
	crashPoint("symlink", tmp)
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
		crashPoint("rename", name)
	}
	if err == nil {
		err = syncDir(dir)
	}
	return err
}

// removeFile removes path; a missing file is not an error.
func removeFile(path string) error {
	err := os.Remove(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	crashPoint("remove", path)
	return err
}

// makeDir creates dir and its parents.
func makeDir(dir string, mode os.FileMode) error { return os.MkdirAll(dir, mode) }

// openPart opens a download's partial file for appending.
func openPart(path string) (*partFile, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	return &partFile{f: f, path: path}, nil
}

// partFile is a partial download being written. Its first write of each
// attempt and its final sync are crash points (the writes in between are
// the same case: a file some bytes long).
type partFile struct {
	f       *os.File
	path    string
	written bool
}

func (p *partFile) Seek(offset int64, whence int) (int64, error) { return p.f.Seek(offset, whence) }

// Truncate empties the file (a restart from byte zero).
func (p *partFile) Truncate() (int64, error) {
	if err := p.f.Truncate(0); err != nil {
		return 0, err
	}
	crashPoint("truncate", p.path)
	return p.f.Seek(0, io.SeekStart)
}

func (p *partFile) Write(b []byte) (int, error) {
	n, err := p.f.Write(b)
	if !p.written {
		p.written = true
		crashPoint("write", p.path)
	}
	return n, err
}

// Sync makes the bytes written durable.
func (p *partFile) Sync() error {
	err := p.f.Sync()
	crashPoint("sync", p.path)
	return err
}

func (p *partFile) Close() error { return p.f.Close() }

// cleanDir removes every entry of dir except those named in keep.
func cleanDir(dir string, keep map[string]bool) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range entries {
		if keep[e.Name()] {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if e.IsDir() {
			err = os.RemoveAll(p)
			crashPoint("remove", p)
		} else {
			err = removeFile(p)
		}
		if err != nil {
			return removed, err
		}
		removed = append(removed, e.Name())
	}
	return removed, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
