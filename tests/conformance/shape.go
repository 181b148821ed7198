// Package conformance sends the same requests to Debian's qemu-ga and to
// guest-agent in the same test run and compares the shape of every reply:
// keys, JSON types and error classes.
package conformance

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// shape renders a JSON value's structure: member names and types, not
// values. Arrays are described by the union of their elements' shapes.
func shape(v any) string {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + ":" + shape(x[k])
		}
		return "{" + strings.Join(parts, ",") + "}"
	case []any:
		seen := map[string]bool{}
		var kinds []string
		for _, e := range x {
			s := shape(e)
			if !seen[s] {
				seen[s] = true
				kinds = append(kinds, s)
			}
		}
		sort.Strings(kinds)
		return "[" + strings.Join(kinds, "|") + "]"
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "bool"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

// replyShape is the shape of a reply; for errors only the class counts
// (descriptions are compared separately where they must match).
func replyShape(line []byte) (string, error) {
	var v map[string]any
	if err := json.Unmarshal(line, &v); err != nil {
		return "", fmt.Errorf("reply %q is not a JSON object: %w", line, err)
	}
	if e, ok := v["error"].(map[string]any); ok {
		s := "error:" + fmt.Sprint(e["class"])
		if _, ok := v["id"]; ok {
			s += " id"
		}
		return s, nil
	}
	return shape(v), nil
}
