package sim

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Summary is one line about the fleet for people: how many devices have
// an open stream of how many enrolled, how many run, how many ferryd
// refused, what the simulated hardware did, how many installs came from a
// patch and how many bytes of targets the fleet downloaded.
func (f *Fleet) Summary() string {
	st := &f.Stats
	return fmt.Sprintf("connected=%d/%d running=%d refused=%d restarts=%d installs=%d rollbacks=%d patched=%d downloaded=%dB",
		st.Connected.Load(), st.Enrolled.Load(), st.Running.Load(), st.Refused.Load(),
		st.Restarts.Load(), st.Installs.Load(), st.Rollbacks.Load(), st.Patched.Load(), st.Downloaded.Load())
}

// FormatCounts renders counts as "key=n" pairs, the largest first (ties
// by key), or "none" when there are none.
func FormatCounts[N cmp.Ordered](counts map[string]N) string {
	if len(counts) == 0 {
		return "none"
	}
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b string) int {
		return cmp.Or(cmp.Compare(counts[b], counts[a]), strings.Compare(a, b))
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%v", k, counts[k])
	}
	return strings.Join(parts, " ")
}

// DescribeRefusals says in one line per distinct reason which devices
// ferryd refuses; they have stopped retrying.
func DescribeRefusals(rs []Refusal) []string {
	byReason := map[string][]string{}
	var reasons []string
	for _, r := range rs {
		msg := r.Err.Error()
		if _, ok := byReason[msg]; !ok {
			reasons = append(reasons, msg)
		}
		byReason[msg] = append(byReason[msg], r.ID)
	}
	lines := make([]string, 0, len(reasons))
	for _, msg := range reasons {
		ids := byReason[msg]
		slices.Sort(ids)
		shown := ids
		if len(shown) > 5 {
			shown = shown[:5]
		}
		list := strings.Join(shown, ", ")
		if len(ids) > len(shown) {
			list += fmt.Sprintf(" and %d more", len(ids)-len(shown))
		}
		noun := "devices"
		if len(ids) == 1 {
			noun = "device"
		}
		lines = append(lines, fmt.Sprintf("ferryd refuses %d %s (%s), which stopped retrying: %s "+
			"(revoked or removed, or ferryd's CA changed: run simulate again to enroll new devices)", len(ids), noun, list, msg))
	}
	return lines
}
