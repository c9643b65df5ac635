package delta

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
)

// Make writes to dst a patch that turns base into target.
//
// Both files are mapped read-only; the encoder holds about two windows of
// its own per segment and an index of the base's anchors (about a million
// entries at most). The files must not change while Make runs.
func Make(ctx context.Context, dst io.Writer, base, target *os.File, opts Options) error {
	w, err := opts.window()
	if err != nil {
		return err
	}
	b, unmapBase, err := mapFile(base)
	if err != nil {
		return err
	}
	defer unmapBase()
	t, unmapTarget, err := mapFile(target)
	if err != nil {
		return err
	}
	defer unmapTarget()

	h := header{window: uint32(w), baseLen: uint64(len(b)), resultLen: uint64(len(t))}
	h.baseSHA = sha256.Sum256(b)
	h.resultSHA = sha256.Sum256(t)
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := dst.Write(h.marshal()); err != nil {
		return err
	}

	seg := segmentSize(w)
	dictMax := w - seg
	mask := anchorMask(len(b))
	p := placer{idx: indexBase(b, mask), mask: mask}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression),
		zstd.WithWindowSize(w), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return err
	}
	defer enc.Close()
	frame := make([]byte, 0, maxFrame(seg))
	for start := 0; start < len(t); start += seg {
		if err := ctx.Err(); err != nil {
			return err
		}
		end := min(start+seg, len(t))
		at := p.place(t, start, end)
		// Centre the dictionary on where the segment came from.
		dictLen := min(dictMax, len(b))
		dictOff := at - (dictMax-(end-start))/2
		dictOff = max(0, min(dictOff, len(b)-dictLen))
		dict := b[dictOff : dictOff+dictLen]
		if err := enc.ResetWithOptions(nil, zstd.WithEncoderDictRaw(0, dict)); err != nil {
			return fmt.Errorf("delta: encoder: %w", err)
		}
		frame = enc.EncodeAll(t[start:end], frame[:0])
		if len(frame) > maxFrame(end-start) {
			return fmt.Errorf("delta: segment at %d compressed to %d bytes, more than the format allows", start, len(frame))
		}
		s := segment{dictOff: uint64(dictOff), dictLen: uint32(dictLen), size: uint32(end - start), frameLen: uint32(len(frame))}
		if _, err := dst.Write(s.marshal()); err != nil {
			return err
		}
		if _, err := dst.Write(frame); err != nil {
			return err
		}
	}
	return nil
}
