package xenstoretest

import (
	"slices"
	"strings"

	"github.com/guest-agent/guest-agent/shared/xenstore"
)

// node is one XenStore node: a value and named children, no distinction
// between directories and leaves, as xenstore.txt defines it.
type node struct {
	value    []byte
	children map[string]*node
}

func newNode() *node { return &node{children: make(map[string]*node)} }

func (n *node) clone() *node {
	c := &node{value: slices.Clone(n.value), children: make(map[string]*node, len(n.children))}
	for k, v := range n.children {
		c.children[k] = v.clone()
	}
	return c
}

func (n *node) childNames() []string {
	names := make([]string, 0, len(n.children))
	for k := range n.children {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// elems splits a canonical absolute path; "/" has no elements.
func elems(path string) []string {
	if path == "/" {
		return nil
	}
	return strings.Split(path[1:], "/")
}

func (n *node) lookup(path string) *node {
	for _, e := range elems(path) {
		n = n.children[e]
		if n == nil {
			return nil
		}
	}
	return n
}

// write stores value, creating missing parents with empty values.
func (n *node) write(path string, value []byte) {
	for _, e := range elems(path) {
		c := n.children[e]
		if c == nil {
			c = newNode()
			n.children[e] = c
		}
		n = c
	}
	n.value = slices.Clone(value)
}

// mkdir reports whether it created anything.
func (n *node) mkdir(path string) bool {
	created := false
	for _, e := range elems(path) {
		c := n.children[e]
		if c == nil {
			c = newNode()
			n.children[e] = c
			created = true
		}
		n = c
	}
	return created
}

// rm removes path and its subtree. A missing node is fine when its parent
// exists; a missing parent is ENOENT. It reports whether it removed
// anything.
func (n *node) rm(path string) (bool, error) {
	es := elems(path)
	if len(es) == 0 {
		return false, xenstore.ErrInvalid // the root cannot go
	}
	parent := n.lookup("/" + strings.Join(es[:len(es)-1], "/"))
	if parent == nil {
		return false, xenstore.ErrNotFound
	}
	last := es[len(es)-1]
	if _, ok := parent.children[last]; !ok {
		return false, nil
	}
	delete(parent.children, last)
	return true, nil
}

// isChild reports whether child is parent or below it, xenstore.txt's
// definition ("/" is everybody's parent).
func isChild(child, parent string) bool {
	if parent == "/" {
		return strings.HasPrefix(child, "/")
	}
	return child == parent || strings.HasPrefix(child, parent+"/")
}

// validPath checks a canonical absolute path against xenstore.txt: ASCII
// alphanumerics and -/_@, no doubled or trailing slash, bounded length.
func validPath(p string) bool {
	if p == "" || p[0] != '/' || len(p) > xenstore.AbsPathMax {
		return false
	}
	if p == "/" {
		return true
	}
	if strings.HasSuffix(p, "/") || strings.Contains(p, "//") {
		return false
	}
	for i := 0; i < len(p); i++ {
		ch := p[i]
		switch {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9':
		case ch == '-', ch == '/', ch == '_', ch == '@':
		default:
			return false
		}
	}
	return true
}
