package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// writeFile writes data to a new file in t's temporary directory and
// returns it opened for reading.
func writeFile(t testing.TB, name string, data []byte) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// image returns n bytes that look like a binary: runs of text-like and
// random bytes, so that zstd finds structure but a patch must reuse the
// base to be small.
func image(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := 0; i < n; {
		run := min(n-i, 16+r.IntN(512))
		if r.IntN(3) == 0 {
			for j := range run {
				b[i+j] = "abcdefghijklmnop\x00\x01\x02"[r.IntN(19)]
			}
		} else {
			for j := range run {
				b[i+j] = byte(r.Uint32())
			}
		}
		i += run
	}
	return b
}

// edit returns a copy of b with local changes: bytes overwritten, an
// insertion and a removal, which shift what follows.
func edit(b []byte, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	out := bytes.Clone(b)
	for range 20 {
		if len(out) < 64 {
			break
		}
		at := r.IntN(len(out) - 32)
		for j := range 16 {
			out[at+j] = byte(r.Uint32())
		}
	}
	if len(out) > 1000 {
		at := r.IntN(len(out) / 2)
		ins := image(seed+7, 777)
		out = append(out[:at:at], append(ins, out[at:]...)...)
		cut := len(out)/2 + r.IntN(len(out)/4)
		out = append(out[:cut:cut], out[cut+500:]...)
	}
	return out
}

func makePatch(t testing.TB, base, target []byte, opts Options) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Make(context.Background(), &buf, writeFile(t, "base", base), writeFile(t, "target", target), opts); err != nil {
		t.Fatalf("Make: %v", err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	big := image(1, 3<<20)
	tests := []struct {
		name         string
		base, target []byte
		window       int
		maxRatio     float64 // patch ÷ target at most (0: not checked)
	}{
		{"both empty", nil, nil, 0, 0},
		{"empty base", nil, image(2, 100<<10), MinWindow * 4, 0},
		{"empty target", image(3, 100<<10), nil, MinWindow, 0},
		{"identical", big, big, 1 << 20, 0.01},
		{"local changes, small window", big, edit(big, 4), 64 << 10, 0.05},
		{"local changes, default window", big, edit(big, 5), 0, 0.02},
		{"unrelated", image(6, 200<<10), image(7, 300<<10), 64 << 10, 0},
		{"target shorter than a segment", image(8, 50<<10), edit(image(8, 50<<10), 9)[:1000], 64 << 10, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := Options{Window: tc.window}
			patch := makePatch(t, tc.base, tc.target, opts)
			var out bytes.Buffer
			if err := Apply(context.Background(), &out, writeFile(t, "base", tc.base), bytes.NewReader(patch), opts); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if !bytes.Equal(out.Bytes(), tc.target) {
				t.Fatalf("result differs from the target: %d bytes, want %d", out.Len(), len(tc.target))
			}
			if tc.maxRatio > 0 {
				if r := float64(len(patch)) / float64(len(tc.target)); r > tc.maxRatio {
					t.Fatalf("patch is %d bytes, %.3f of the target, want at most %.3f", len(patch), r, tc.maxRatio)
				}
			}
		})
	}
}

func TestApplyRefuses(t *testing.T) {
	base := image(10, 400<<10)
	target := edit(base, 11)
	opts := Options{Window: 64 << 10}
	patch := makePatch(t, base, target, opts)
	otherBase := bytes.Clone(base)
	otherBase[1234] ^= 0xff

	flip := func(at int) []byte { p := bytes.Clone(patch); p[at] ^= 0x55; return p }
	tests := []struct {
		name  string
		base  []byte
		patch []byte
		opts  Options
		want  error
	}{
		{"empty patch", base, nil, opts, ErrCorrupt},
		{"not a patch", base, []byte("hello, this is not a patch at all; it is long enough for a header..................................."), opts, ErrCorrupt},
		{"truncated header", base, patch[:50], opts, ErrCorrupt},
		{"truncated in a segment header", base, patch[:headerSize+10], opts, ErrCorrupt},
		{"truncated in a frame", base, patch[:len(patch)/2], opts, ErrCorrupt},
		{"last byte missing", base, patch[:len(patch)-1], opts, ErrCorrupt},
		{"trailing bytes", base, append(bytes.Clone(patch), 0), opts, ErrCorrupt},
		{"frame byte flipped", base, flip(len(patch) - 100), opts, ErrCorrupt},
		{"result hash flipped", base, flip(70), opts, ErrResultMismatch},
		{"window larger than allowed", base, patch, Options{Window: 32 << 10}, ErrWindow},
		{"options window not a power of two", base, patch, Options{Window: 100000}, ErrWindow},
		{"wrong base, same length", otherBase, patch, opts, ErrBaseMismatch},
		{"wrong base, other length", base[:len(base)-1], patch, opts, ErrBaseMismatch},
		{"empty base", nil, patch, opts, ErrBaseMismatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := Apply(context.Background(), &out, writeFile(t, "base", tc.base), bytes.NewReader(tc.patch), tc.opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Apply = %v, want %v", err, tc.want)
			}
			if errors.Is(tc.want, ErrBaseMismatch) && out.Len() != 0 {
				t.Fatalf("wrote %d bytes with the wrong base", out.Len())
			}
		})
	}
}

func TestMakeRefusesBadWindow(t *testing.T) {
	for _, w := range []int{-1, 1000, MinWindow / 2, MaxWindow * 2, 3 << 20} {
		err := Make(context.Background(), new(bytes.Buffer), writeFile(t, "b", []byte("a")), writeFile(t, "t", []byte("b")), Options{Window: w})
		if !errors.Is(err, ErrWindow) {
			t.Errorf("window %d: Make = %v, want ErrWindow", w, err)
		}
	}
}

func TestCanceled(t *testing.T) {
	base := image(12, 200<<10)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Make(ctx, new(bytes.Buffer), writeFile(t, "b", base), writeFile(t, "t", base), Options{Window: 64 << 10})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Make = %v, want context.Canceled", err)
	}
	patch := makePatch(t, base, base, Options{Window: 64 << 10})
	err = Apply(ctx, new(bytes.Buffer), writeFile(t, "b", base), bytes.NewReader(patch), Options{Window: 64 << 10})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply = %v, want context.Canceled", err)
	}
}

// FuzzApply feeds Apply untrusted patch bytes: it must return an error or
// the exact result, never panic, and allocate within the window.
func FuzzApply(f *testing.F) {
	base := image(20, 64<<10)
	target := edit(base, 21)
	opts := Options{Window: MinWindow * 4}
	patch := makePatch(f, base, target, opts)
	f.Add(patch)
	f.Add(patch[:headerSize+segmentHeaderSize+3])
	f.Add([]byte{})
	baseFile := writeFile(f, "base", base)
	f.Fuzz(func(t *testing.T, p []byte) {
		var out bytes.Buffer
		err := Apply(context.Background(), &out, baseFile, bytes.NewReader(p), opts)
		if err == nil {
			var h header
			if hh, herr := readHeader(bytes.NewReader(p)); herr == nil {
				h = hh
			}
			if sha256.Sum256(out.Bytes()) != h.resultSHA || uint64(out.Len()) != h.resultLen {
				t.Fatalf("Apply succeeded with output that does not match the header")
			}
		}
	})
}

// TestApplyMemoryBounded applies a patch to an 8 MiB image with a 128 KiB
// window: what Apply allocates in all stays near the window, far below
// the image (the base is mapped, the result streamed).
func TestApplyMemoryBounded(t *testing.T) {
	base := image(30, 8<<20)
	target := edit(base, 31)
	opts := Options{Window: 128 << 10}
	patch := makePatch(t, base, target, opts)
	baseFile := writeFile(t, "base", base)
	sum := sha256.New()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := Apply(context.Background(), sum, baseFile, bytes.NewReader(patch), opts); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if got, want := sum.Sum(nil), sha256.Sum256(target); !bytes.Equal(got, want[:]) {
		t.Fatal("result differs from the target")
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 2<<20 {
		t.Fatalf("Apply allocated %d bytes in all for a %d-byte image with a %d-byte window", alloc, len(target), opts.Window)
	} else {
		t.Logf("Apply allocated %d bytes in all for a %d-byte image with a %d-byte window", alloc, len(target), opts.Window)
	}
}
