// Package delta makes and applies binary patches between two versions of a
// bundle, so that a device that runs the base can download a patch instead
// of the whole new image.
//
// # Format
//
// A patch ("zstd-patch-from" in a target's custom metadata) is a short
// header followed by segments. The header carries the window, the base's
// length and SHA-256 and the result's length and SHA-256. The result is cut
// into segments of Window/4 bytes; each segment is one zstd frame
// (github.com/klauspost/compress/zstd) compressed with a raw dictionary
// that is a slice of at most 3/4 Window bytes of the base, and the segment
// names that slice by offset and length. This is zstd's patch-from mode
// applied per segment: a match may copy from the chosen base slice or from
// the segment decoded so far, never farther than Window bytes back.
//
// # Why segments, not one patch-from frame
//
// klauspost/compress/zstd supports raw dictionaries (WithEncoderDictRaw,
// WithDecoderDictRaw, at most 2 GiB) and its decoder references the
// dictionary slice in place, so a read-only mapping of the base costs no
// heap. But in one patch-from frame the dictionary is a prefix of the
// output: for a match in the result to reach the base content at the same
// place, the frame's window must be at least the base's size, and a
// streaming decoder keeps a window of decoded output in memory, so
// applying a 500 MiB patch-from frame needs about 500 MiB of RAM on the
// device. The segmented form bounds that: the decoder holds one segment
// (Window/4) and its compressed frame, the base stays in the page cache.
// Make chooses each segment's base slice by content-defined anchors (a
// gear rolling hash, as in FastCDC) found in both files, so insertions and
// removals that shift the rest of the image are followed. The price is
// that content moved farther than about Window/4 from where the anchors
// place it is not matched.
//
// Apply checks the base's length and SHA-256 before it writes anything and
// the result's length and SHA-256 before it returns; everything read from a
// patch is bounded by the caller's Options.Window, so a hostile patch can
// neither make Apply allocate more nor make it panic.
package delta

import (
	"errors"
	"fmt"
)

// Format is the name of the patch format in a target's custom metadata.
const Format = "zstd-patch-from"

// DefaultWindow is the window when Options.Window is zero: 8 MiB, so a
// device holds about 4 MiB of its own while it applies a patch.
const DefaultWindow = 8 << 20

// MinWindow and MaxWindow bound Options.Window; it must be a power of two.
const (
	MinWindow = 4 << 10
	MaxWindow = 512 << 20
)

// Options bound a patch's memory: Window is the largest distance, in bytes,
// a match may reach back; the decoder needs about Window bytes of RAM beyond
// the base it reads.
type Options struct{ Window int }

// Errors Apply returns, wrapped with detail; test with errors.Is.
var (
	// ErrCorrupt: the patch is truncated, malformed or not a patch.
	ErrCorrupt = errors.New("delta: corrupt patch")
	// ErrBaseMismatch: the base is not the file the patch was made from.
	ErrBaseMismatch = errors.New("delta: base does not match the patch")
	// ErrResultMismatch: the output does not have the length and SHA-256
	// the patch promises (the output written must be discarded).
	ErrResultMismatch = errors.New("delta: result does not match the patch")
	// ErrWindow: the window is not a power of two in range, or the patch
	// needs a larger window than the caller allows.
	ErrWindow = errors.New("delta: window out of bounds")
)

// window returns the effective window of o.
func (o Options) window() (int, error) {
	w := o.Window
	if w == 0 {
		w = DefaultWindow
	}
	if w < MinWindow || w > MaxWindow || w&(w-1) != 0 {
		return 0, fmt.Errorf("%w: %d is not a power of two in [%d, %d]", ErrWindow, w, MinWindow, MaxWindow)
	}
	return w, nil
}

// segmentSize is the result bytes per segment for window w; the rest of
// the window is the base slice the segment may copy from.
func segmentSize(w int) int { return w / 4 }

// maxFrame bounds the compressed frame of a segment of n bytes: zstd stores
// incompressible blocks raw with 3 bytes per 128 KiB block, plus the frame
// header and checksum.
func maxFrame(n int) int { return n + n/64 + 1024 }

// magic starts every patch.
var magic = [8]byte{'F', 'E', 'R', 'R', 'Y', 'D', 'P', '1'}
