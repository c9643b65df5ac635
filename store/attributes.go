package store

import (
	"maps"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// AttributePrefix marks a selector key that names an attribute rather than
// a label: "attr.hardware=gw2" selects by the hardware attribute. Labels
// whose keys start with it cannot be selected.
const AttributePrefix = "attr."

// SelectorSet is what a selector is matched against: the device's labels,
// and its attributes under AttributePrefix.
func (d Device) SelectorSet() labels.Set {
	set := make(labels.Set, len(d.Labels)+len(d.Attributes))
	for k, v := range d.Labels {
		if !strings.HasPrefix(k, AttributePrefix) {
			set[k] = v
		}
	}
	for k, v := range d.Attributes {
		set[AttributePrefix+k] = v
	}
	return set
}

// Index kinds of IndexTerm.
const (
	IndexLabel     = "label"
	IndexAttribute = "attribute"
)

// IndexTerm is a positive term of a query's selector that a backend can
// answer from an index: the devices whose label (Kind IndexLabel) or
// attribute (IndexAttribute) Key has one of Values. Those devices are the
// candidates; the whole query filters them.
type IndexTerm struct {
	Kind   string
	Key    string
	Values []string
}

// SelectorIndex returns the selector term a backend walks the index of:
// the first equality term in key order, else the first "in" term with the
// fewest values. ok is false when the selector has no such term (only
// negative or existence terms): the backend then walks every device.
func (q Query) SelectorIndex() (t IndexTerm, ok bool) {
	if q.Selector == nil {
		return IndexTerm{}, false
	}
	reqs, _ := q.Selector.Requirements()
	for _, r := range reqs {
		var vals []string
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals, selection.In:
			vals = slices.Sorted(maps.Keys(r.Values()))
		default:
			continue
		}
		if len(vals) == 0 {
			continue
		}
		if ok && len(vals) >= len(t.Values) {
			continue
		}
		t, ok = IndexTerm{Kind: IndexLabel, Key: r.Key(), Values: vals}, true
		if k, attr := strings.CutPrefix(r.Key(), AttributePrefix); attr {
			t.Kind, t.Key = IndexAttribute, k
		}
		if len(vals) == 1 {
			break
		}
	}
	return t, ok
}
