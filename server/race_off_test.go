//go:build !race

package server_test

// memoryOverhead: see race_on_test.go.
const memoryOverhead = 1
