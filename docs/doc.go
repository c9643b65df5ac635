// Package docs holds no code: its tests keep Ferry's documentation true.
// They check the signed report's JSON Schema (docs/schema) against what the
// reference agent signs and what ferryd refuses, and that the worked
// example in protocol.md is byte for byte what Ferry's verifier accepts.
package docs
