//go:build race

package server_test

// memoryOverhead is how much more heap and resident memory a request costs
// under the race detector, which pads every allocation and keeps shadow
// memory for it. Memory bounds are loosened by it under -race; the test
// command also runs the memory-bound tests without the detector, at the
// tight bounds.
const memoryOverhead = 4
