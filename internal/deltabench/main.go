// Command deltabench makes and applies Ferry patches for the measurements
// in docs/benchmarks.md (scripts/bench-delta runs it). It reports the
// time taken and, for apply, the peak anonymous memory (heap and stacks:
// what the device must hold), sampled from /proc/self/status, beside the
// peak resident set, which also counts the base's pages mapped from the
// page cache (clean file pages the kernel can drop and read back).
//
//	deltabench make -window N BASE TARGET PATCH
//	deltabench apply -window N BASE PATCH OUT
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryhq/ferry/delta"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: deltabench make|apply -window N FILES...")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	window := fs.Int("window", delta.DefaultWindow, "patch window in bytes")
	_ = fs.Parse(os.Args[2:])
	args := fs.Args()
	opts := delta.Options{Window: *window}
	var peak atomic.Int64
	stop := sampleAnon(&peak)
	start := time.Now()
	var err error
	switch os.Args[1] {
	case "make":
		if len(args) != 3 {
			err = fmt.Errorf("make wants BASE TARGET PATCH")
			break
		}
		err = withFiles(args[0], args[1], args[2], func(a, b, out *os.File) error {
			w := bufio.NewWriterSize(out, 1<<20)
			if err := delta.Make(context.Background(), w, a, b, opts); err != nil {
				return err
			}
			return w.Flush()
		})
	case "apply":
		if len(args) != 3 {
			err = fmt.Errorf("apply wants BASE PATCH OUT")
			break
		}
		err = withFiles(args[0], args[1], args[2], func(base, patch, out *os.File) error {
			w := bufio.NewWriterSize(out, 64<<10)
			if err := delta.Apply(context.Background(), w, base, bufio.NewReaderSize(patch, 64<<10), opts); err != nil {
				return err
			}
			return w.Flush()
		})
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	took := time.Since(start)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "deltabench:", err)
		os.Exit(1)
	}
	fmt.Printf("seconds=%.3f peak_anon_kib=%d peak_rss_kib=%d\n", took.Seconds(), peak.Load(), status("VmHWM"))
}

func withFiles(in1, in2, out string, f func(a, b, o *os.File) error) error {
	a, err := os.Open(in1)
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := os.Open(in2)
	if err != nil {
		return err
	}
	defer b.Close()
	o, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := f(a, b, o); err != nil {
		o.Close()
		return err
	}
	return o.Close()
}

// sampleAnon records the largest RssAnon seen every 2 ms until stopped.
func sampleAnon(peak *atomic.Int64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			if v := status("RssAnon"); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// status returns a kB field of /proc/self/status, 0 if absent.
func status(field string) int64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}
