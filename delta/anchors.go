package delta

import "slices"

// gear is the table of the gear rolling hash (as in FastCDC): after 64
// bytes the hash depends only on the last 64 bytes read.
var gear = func() (t [256]uint64) {
	x := uint64(0x9e3779b97f4a7c15) // splitmix64, fixed seed
	for i := range t {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		t[i] = z ^ (z >> 31)
	}
	return t
}()

// anchorMask selects, on average, one position in 1<<bits as an anchor;
// bits grows with the base so the index stays near a million entries.
func anchorMask(baseLen int) uint64 {
	bits := 6
	for bits < 16 && baseLen>>bits > 1<<20 {
		bits++
	}
	return (uint64(1) << bits) - 1
}

// anchorIndex maps an anchor's hash to its position in the base; -1 marks
// a hash seen more than once (repeated content places nothing).
type anchorIndex map[uint64]int

func indexBase(base []byte, mask uint64) anchorIndex {
	idx := make(anchorIndex, len(base)/int(mask+1)+1)
	var h uint64
	for i, c := range base {
		h = h<<1 + gear[c]
		if i >= 63 && h&mask == 0 {
			if _, dup := idx[h]; dup {
				idx[h] = -1
			} else {
				idx[h] = i
			}
		}
	}
	return idx
}

// placer follows the target through the base: place returns the base
// offset where the segment target[start:end] most likely came from.
type placer struct {
	idx    anchorIndex
	mask   uint64
	h      uint64
	starts []int
	// next is where the previous segment's placement ends in the base,
	// the guess for a segment with no anchor in the base.
	next int
}

func (p *placer) place(target []byte, start, end int) int {
	p.starts = p.starts[:0]
	for i := start; i < end; i++ {
		p.h = p.h<<1 + gear[target[i]]
		if i >= 63 && p.h&p.mask == 0 {
			if b, ok := p.idx[p.h]; ok && b >= 0 {
				// The anchor at target i is base b: the segment would
				// start at base b-(i-start).
				p.starts = append(p.starts, b-(i-start))
			}
		}
	}
	at := p.next
	if len(p.starts) > 0 {
		slices.Sort(p.starts)
		at = p.starts[len(p.starts)/2]
	}
	p.next = at + (end - start)
	return at
}
