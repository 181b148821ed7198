//go:build docs

package config

import (
	_ "embed"
	"strings"
)

// manPage is agent.hcl(5) in go-md2man's markdown; @DATE@ and @VERSION@
// are filled in by ManPage. Built only with -tags docs (make doc).
//
//go:embed agent.hcl.5.md
var manPage string

// ManPage returns the markdown of agent.hcl(5) for version, dated date.
func ManPage(version, date string) []byte {
	return []byte(strings.NewReplacer("@DATE@", date, "@VERSION@", version).Replace(manPage))
}
