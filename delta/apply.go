package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
)

// Apply writes to dst the result of patch on base, streaming, holding about
// opts.Window bytes of its own (the base is read from the file, e.g. mapped,
// not copied into the heap).
//
// opts.Window is the largest window the caller accepts: a patch made with
// a larger one is refused before anything is read past its header. The
// base's length and SHA-256 are checked before anything is written; the
// result's length and SHA-256 are checked at the end, so when Apply
// returns an error, whatever it wrote to dst must be discarded.
func Apply(ctx context.Context, dst io.Writer, base *os.File, patch io.Reader, opts Options) error {
	limit, err := opts.window()
	if err != nil {
		return err
	}
	h, err := readHeader(patch)
	if err != nil {
		return err
	}
	w := int(h.window)
	if w < MinWindow || w > MaxWindow || w&(w-1) != 0 {
		return fmt.Errorf("%w: patch window %d", ErrCorrupt, h.window)
	}
	if w > limit {
		return fmt.Errorf("%w: the patch needs a %d-byte window, more than the %d allowed", ErrWindow, w, limit)
	}
	b, unmap, err := mapFile(base)
	if err != nil {
		return err
	}
	defer unmap()
	if uint64(len(b)) != h.baseLen {
		return fmt.Errorf("%w: base has %d bytes, the patch was made from %d", ErrBaseMismatch, len(b), h.baseLen)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if sha256.Sum256(b) != h.baseSHA {
		return fmt.Errorf("%w: base SHA-256 differs from %x", ErrBaseMismatch, h.baseSHA)
	}

	seg := segmentSize(w)
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(uint64(w)), zstd.WithDecoderMaxMemory(uint64(seg)), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return err
	}
	defer dec.Close()
	frame := make([]byte, 0, min(maxFrame(seg), 64<<10))
	out := make([]byte, 0, min(seg, 64<<10))
	sum := sha256.New()
	var done uint64
	for done < h.resultLen {
		if err := ctx.Err(); err != nil {
			return err
		}
		s, err := readSegment(patch)
		if err != nil {
			return err
		}
		switch {
		case s.size == 0 || int(s.size) > seg || uint64(s.size) > h.resultLen-done:
			return fmt.Errorf("%w: segment at %d of %d bytes", ErrCorrupt, done, s.size)
		case int(s.dictLen)+int(s.size) > w || s.dictOff > h.baseLen || uint64(s.dictLen) > h.baseLen-s.dictOff:
			return fmt.Errorf("%w: segment at %d names base bytes %d+%d", ErrCorrupt, done, s.dictOff, s.dictLen)
		case int(s.frameLen) > maxFrame(int(s.size)):
			return fmt.Errorf("%w: segment at %d has a %d-byte frame", ErrCorrupt, done, s.frameLen)
		}
		// Grow the buffers only as far as the segment needs, never past
		// the window's bounds checked above.
		frame = grow(frame, int(s.frameLen))
		if _, err := io.ReadFull(patch, frame); err != nil {
			return fmt.Errorf("%w: segment at %d: %w", ErrCorrupt, done, err)
		}
		dict := b[s.dictOff : s.dictOff+uint64(s.dictLen)]
		if err := dec.ResetWithOptions(nil, zstd.WithDecoderDictRaw(0, dict)); err != nil {
			return fmt.Errorf("delta: decoder: %w", err)
		}
		out = grow(out, int(s.size))
		got, err := dec.DecodeAll(frame, out[:0])
		if err != nil {
			return fmt.Errorf("%w: segment at %d: %w", ErrCorrupt, done, err)
		}
		if len(got) != int(s.size) {
			return fmt.Errorf("%w: segment at %d decoded to %d bytes, not %d", ErrCorrupt, done, len(got), s.size)
		}
		sum.Write(got)
		if _, err := dst.Write(got); err != nil {
			return err
		}
		done += uint64(s.size)
	}
	var extra [1]byte
	if n, _ := io.ReadFull(patch, extra[:]); n != 0 {
		return fmt.Errorf("%w: bytes after the last segment", ErrCorrupt)
	}
	if !bytes.Equal(sum.Sum(nil), h.resultSHA[:]) {
		return fmt.Errorf("%w: SHA-256 differs from %x", ErrResultMismatch, h.resultSHA)
	}
	return nil
}

// grow returns b with length n, reallocating only when n exceeds its
// capacity.
func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}
