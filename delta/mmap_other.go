//go:build !unix

package delta

import (
	"io"
	"os"
)

// mapFile reads f into memory where the platform has no mmap in
// golang.org/x/sys/unix; on such platforms the base costs its size in RAM.
func mapFile(f *os.File) (data []byte, unmap func(), err error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, nil, err
	}
	data, err = io.ReadAll(f)
	if err != nil {
		return nil, nil, err
	}
	return data, func() {}, nil
}
