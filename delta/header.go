package delta

import (
	"encoding/binary"
	"fmt"
	"io"
)

// header is the fixed start of a patch.
type header struct {
	window    uint32
	baseLen   uint64
	baseSHA   [32]byte
	resultLen uint64
	resultSHA [32]byte
}

const headerSize = 8 + 4 + 8 + 32 + 8 + 32

func (h *header) marshal() []byte {
	b := make([]byte, 0, headerSize)
	b = append(b, magic[:]...)
	b = binary.LittleEndian.AppendUint32(b, h.window)
	b = binary.LittleEndian.AppendUint64(b, h.baseLen)
	b = append(b, h.baseSHA[:]...)
	b = binary.LittleEndian.AppendUint64(b, h.resultLen)
	b = append(b, h.resultSHA[:]...)
	return b
}

func readHeader(r io.Reader) (header, error) {
	var b [headerSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return header{}, fmt.Errorf("%w: header: %w", ErrCorrupt, err)
	}
	if [8]byte(b[:8]) != magic {
		return header{}, fmt.Errorf("%w: not a Ferry patch (magic %q)", ErrCorrupt, b[:8])
	}
	var h header
	h.window = binary.LittleEndian.Uint32(b[8:])
	h.baseLen = binary.LittleEndian.Uint64(b[12:])
	copy(h.baseSHA[:], b[20:52])
	h.resultLen = binary.LittleEndian.Uint64(b[52:])
	copy(h.resultSHA[:], b[60:92])
	return h, nil
}

// segment heads each zstd frame: the base slice used as its dictionary,
// the result bytes it decodes to and the frame's length.
type segment struct {
	dictOff  uint64
	dictLen  uint32
	size     uint32
	frameLen uint32
}

const segmentHeaderSize = 8 + 4 + 4 + 4

func (s *segment) marshal() []byte {
	b := make([]byte, 0, segmentHeaderSize)
	b = binary.LittleEndian.AppendUint64(b, s.dictOff)
	b = binary.LittleEndian.AppendUint32(b, s.dictLen)
	b = binary.LittleEndian.AppendUint32(b, s.size)
	b = binary.LittleEndian.AppendUint32(b, s.frameLen)
	return b
}

func readSegment(r io.Reader) (segment, error) {
	var b [segmentHeaderSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return segment{}, fmt.Errorf("%w: segment header: %w", ErrCorrupt, err)
	}
	return segment{
		dictOff:  binary.LittleEndian.Uint64(b[0:]),
		dictLen:  binary.LittleEndian.Uint32(b[8:]),
		size:     binary.LittleEndian.Uint32(b[12:]),
		frameLen: binary.LittleEndian.Uint32(b[16:]),
	}, nil
}
