package main

import (
	"fmt"
	"regexp"
	"strings"
)

var (
	// sinceTag is what git describe appends to a tag: commits since it and
	// the abbreviated commit.
	sinceTag = regexp.MustCompile(`^(.+)-(\d+)-g([0-9a-f]+)$`)
	// bareCommit is --always without any tag.
	bareCommit = regexp.MustCompile(`^[0-9a-f]{7,40}$`)
	// tagRe is a release tag (v1.2.3) or a pre-release one (v1.2.3-rc1).
	tagRe = regexp.MustCompile(`^v?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?$`)
)

// PackageVersion maps `git describe --tags --always --dirty` to a version
// that deb and rpm both accept and order the way git does: a tag v1.2.3 is
// 1.2.3; a pre-release tag v1.2.3-rc1 is 1.2.3~rc1 (before 1.2.3); commits
// after a tag are 1.2.3+git5.gabc1234 (after it); without any tag, commits
// counts the history, 0.0.0+git137.g537f947, so every later commit is a
// newer package; a dirty tree appends .dirty. No '-' (rpm's version field
// refuses it, deb takes the last one as the revision).
func PackageVersion(describe string, commits int) (string, error) {
	d := strings.TrimSpace(describe)
	dirty := strings.HasSuffix(d, "-dirty")
	d = strings.TrimSuffix(d, "-dirty")
	var tag string
	var meta []string
	switch m := sinceTag.FindStringSubmatch(d); {
	case m != nil:
		tag = m[1]
		meta = append(meta, "git"+m[2], "g"+m[3])
	case bareCommit.MatchString(d):
		if commits <= 0 {
			return "", fmt.Errorf("version %q has no tag: the number of commits is needed", describe)
		}
		tag = "0.0.0"
		meta = append(meta, fmt.Sprintf("git%d", commits), "g"+d)
	default:
		tag = d
	}
	t := tagRe.FindStringSubmatch(tag)
	if t == nil {
		return "", fmt.Errorf("version %q: not the output of git describe --tags --always --dirty of a tag like v1.2.3", describe)
	}
	base, pre := t[1], t[2]
	if dirty {
		meta = append(meta, "dirty")
	}
	v := base
	if pre != "" {
		v += "~" + strings.ReplaceAll(pre, "-", ".")
	}
	if len(meta) > 0 {
		v += "+" + strings.Join(meta, ".")
	}
	return v, nil
}
