package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

const nobody = 65534

func mkdir(t *testing.T, path string, mode os.FileMode, uid int) {
	t.Helper()
	if err := os.Mkdir(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask, with sticky bits
		t.Fatal(err)
	}
	if err := os.Lchown(path, uid, uid); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string, uid int) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, uid, uid); err != nil {
		t.Fatal(err)
	}
}

// openErr configures a fresh plugin with opts and returns the error of
// opening path for reading ("" when it opens).
func openErr(t *testing.T, opts, path string) string {
	t.Helper()
	f := newTestPlugin(t, t.TempDir(), opts)
	r := run(t, f, "guest-file-open", fmt.Sprintf(`{"path":%q}`, path), nil)
	if r.err == nil {
		return ""
	}
	return r.err.Desc
}

func rootsOpt(extra string, roots ...string) string {
	q := make([]string, len(roots))
	for i, r := range roots {
		q[i] = fmt.Sprintf("%q", r)
	}
	return fmt.Sprintf(`{"allowed_paths": [%s]%s}`, strings.Join(q, ","), extra)
}

// Issue 9, item 2: a root whose path a user other than root can change (a
// symlink planted at its name, a directory the user owns, a parent anybody
// may write to) is refused, unless allow_unsafe_roots says so: nothing
// beneath it opens, and the error says why.
func TestUnsafeRootsRefused(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
	base := t.TempDir()
	target := filepath.Join(base, "etc-like")
	mkdir(t, target, 0o755, 0)
	writeFile(t, target+"/secret", "secret")

	planted := filepath.Join(base, "planted")
	symlink(t, target, planted, nobody)
	userDir := filepath.Join(base, "user-owned")
	mkdir(t, userDir, 0o755, nobody)
	open := filepath.Join(base, "open")
	mkdir(t, open, 0o777, 0)
	mkdir(t, open+"/exchange", 0o755, 0)
	groupOpen := filepath.Join(base, "group-open")
	mkdir(t, groupOpen, 0o775, 0)
	if err := os.Lchown(groupOpen, 0, nobody); err != nil {
		t.Fatal(err)
	}
	mkdir(t, groupOpen+"/exchange", 0o755, 0)
	userParent := filepath.Join(base, "user-parent")
	mkdir(t, userParent, 0o755, nobody)
	mkdir(t, userParent+"/exchange", 0o755, 0)
	linkVia := filepath.Join(base, "via")
	symlink(t, userParent, linkVia, 0) // a root-owned link into a user's directory

	suffix := ", so a user other than root could change which directory it names (allow_unsafe_roots = true accepts that)"
	for root, reason := range map[string]string{
		planted:                    fmt.Sprintf("%q is a symbolic link owned by uid %d", planted, nobody),
		userDir:                    fmt.Sprintf("%q is owned by uid %d", userDir, nobody),
		open + "/exchange":         fmt.Sprintf("%q is in %q, which users other than root may write to (mode 0777, group 0) and which has no sticky bit", open+"/exchange", open),
		groupOpen + "/exchange":    fmt.Sprintf("%q is in %q, which users other than root may write to (mode 0775, group %d) and which has no sticky bit", groupOpen+"/exchange", groupOpen, nobody),
		userParent + "/exchange":   fmt.Sprintf("%q is owned by uid %d", userParent, nobody),
		linkVia + "/exchange":      fmt.Sprintf("%q is owned by uid %d", userParent, nobody),
		planted + "/../etc-like":   fmt.Sprintf("%q is a symbolic link owned by uid %d", planted, nobody),
		base + "/user-owned/./sub": fmt.Sprintf("%q is owned by uid %d", userDir, nobody),
	} {
		for _, path := range []string{root + "/secret", root} {
			got := openErr(t, rootsOpt("", root), path)
			want := fmt.Sprintf("failed to open file '%s' (mode: 'r'): allowed_paths: refusing %q: %s%s", path, root, reason, suffix)
			if got != want {
				t.Errorf("root %s, open %s:\n got  %s\n want %s", root, path, got, want)
			}
		}
		if got := openErr(t, rootsOpt(`, "allow_unsafe_roots": true`, root), root+"/secret"); strings.Contains(got, "refusing") {
			t.Errorf("root %s with allow_unsafe_roots: %s", root, got)
		}
	}
	// The other roots go on.
	if got := openErr(t, rootsOpt("", planted, target), target+"/secret"); got != "" {
		t.Errorf("a safe root beside an unsafe one: %s", got)
	}
	// A file is not a root.
	if got := openErr(t, rootsOpt("", target+"/secret"), target+"/secret/x"); got != fmt.Sprintf("failed to open file '%s/secret/x' (mode: 'r'): allowed_paths: refusing %q: Not a directory", target, target+"/secret") {
		t.Errorf("a file as root: %s", got)
	}

	// What is safe: root-owned all the way, a root-owned symlink in a
	// root-owned directory (e.g. /var/run → /run), a root-owned entry of a
	// sticky directory (e.g. /tmp), a root that anybody may write into (its
	// contents are the tree; it cannot be replaced).
	sticky := filepath.Join(base, "sticky")
	mkdir(t, sticky, 0o777|os.ModeSticky, 0)
	mkdir(t, sticky+"/exchange", 0o777, 0)
	writeFile(t, sticky+"/exchange/in", "in")
	symlink(t, "sticky/exchange", base+"/rootlink", 0)
	for _, root := range []string{target, sticky + "/exchange", base + "/rootlink", base + "/rootlink/.."} {
		if got := openErr(t, rootsOpt("", root), root+"/none"); !strings.HasSuffix(got, "No such file or directory") {
			t.Errorf("safe root %s: %s", root, got)
		}
	}
	f := newTestPlugin(t, t.TempDir(), rootsOpt("", base+"/rootlink"))
	h := openHandle(t, f, sticky+"/exchange/in", "r")
	if r := ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d}`, h), nil); string(r.blob) != "in" {
		t.Fatalf("read %q", r.blob)
	}
	// With allow_unsafe_roots the planted link is taken as it is at start.
	f = newTestPlugin(t, t.TempDir(), rootsOpt(`, "allow_unsafe_roots": true`, planted))
	h = openHandle(t, f, planted+"/secret", "r")
	if r := ok(t, f, "guest-file-read", fmt.Sprintf(`{"handle":%d}`, h), nil); string(r.blob) != "secret" {
		t.Fatalf("read %q", r.blob)
	}
}

// A root that does not exist yet is opened, with the same checks, once it
// does; until then nothing beneath it opens.
func TestRootCreatedLater(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "later")
	f := newTestPlugin(t, t.TempDir(), rootsOpt("", root))
	fails(t, f, "guest-file-open", fmt.Sprintf(`{"path":%q,"mode":"w"}`, root+"/x"), nil,
		fmt.Sprintf("failed to open file '%s' (mode: 'w'): No such file or directory", root+"/x"))
	mkdir(t, root, 0o755, 0)
	openHandle(t, f, root+"/x", "w")
	if _, err := os.Stat(root + "/x"); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() != 0 {
		return
	}
	// Created later by another user: refused when it is first used.
	root2 := filepath.Join(base, "later2")
	f = newTestPlugin(t, t.TempDir(), rootsOpt("", root2))
	mkdir(t, root2, 0o755, nobody)
	fails(t, f, "guest-file-open", fmt.Sprintf(`{"path":%q,"mode":"w"}`, root2+"/x"), nil,
		fmt.Sprintf("failed to open file '%s' (mode: 'w'): allowed_paths: refusing %q: %q is owned by uid %d, so a user other than root could change which directory it names (allow_unsafe_roots = true accepts that)", root2+"/x", root2, root2, nobody))
	if _, err := os.Stat(root2 + "/x"); err == nil {
		t.Fatal("created a file in a root owned by another user")
	}
}

// The tree that was checked at start is the tree served: a root renamed or
// replaced afterwards does not change it.
func TestRootReplacedAfterStart(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "exchange")
	outside := filepath.Join(base, "outside")
	mkdir(t, root, 0o755, 0)
	mkdir(t, outside, 0o755, 0)
	writeFile(t, root+"/x", "checked")
	writeFile(t, outside+"/x", "OUTSIDE")
	f := newTestPlugin(t, t.TempDir(), rootsOpt("", root))
	read := func(path string) string {
		t.Helper()
		r := run(t, f, "guest-file-open", fmt.Sprintf(`{"path":%q}`, path), nil)
		if r.err != nil {
			return "error: " + r.err.Desc
		}
		h := strings.TrimSpace(string(r.result))
		data := ok(t, f, "guest-file-read", `{"handle":`+h+`}`, nil).blob
		ok(t, f, "guest-file-close", `{"handle":`+h+`}`, nil)
		return string(data)
	}
	if s := read(root + "/x"); s != "checked" {
		t.Fatalf("read %q", s)
	}
	if err := os.Rename(root, base+"/moved"); err != nil {
		t.Fatal(err)
	}
	mkdir(t, root, 0o755, 0)
	writeFile(t, root+"/x", "REPLACEMENT")
	if s := read(root + "/x"); s != "checked" {
		t.Fatalf("after the root was replaced by another directory: read %q", s)
	}
	if err := os.Remove(root + "/x"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(root); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, root); err != nil {
		t.Fatal(err)
	}
	if s := read(root + "/x"); s == "OUTSIDE" {
		t.Fatal("after the root was replaced by a symlink: read outside")
	}
}

// The race of issue 9 item 2, in process: the root's entry swapped with a
// symlink to outside (renameat2 RENAME_EXCHANGE) as fast as it goes while
// files beneath the root are opened and read: not one read may come from
// outside. Before the fix (the root's path followed at each open) about a
// third did. tests/e2e runs the same race from an unprivileged user.
func TestRootSwapRace(t *testing.T) {
	base := t.TempDir()
	parent := filepath.Join(base, "parent")
	mkdir(t, parent, 0o755, 0)
	root := filepath.Join(parent, "exchange")
	mkdir(t, root, 0o755, 0)
	outside := filepath.Join(base, "outside")
	mkdir(t, outside, 0o755, 0)
	writeFile(t, root+"/file", "inside")
	writeFile(t, outside+"/file", "OUTSIDE")
	swap := filepath.Join(parent, "swap")
	if err := os.Symlink(outside, swap); err != nil {
		t.Fatal(err)
	}
	f := newTestPlugin(t, t.TempDir(), rootsOpt("", root))

	var stop atomic.Bool
	var swaps atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if unix.Renameat2(unix.AT_FDCWD, root, unix.AT_FDCWD, swap, unix.RENAME_EXCHANGE) == nil {
				swaps.Add(1)
			}
		}
	}()
	const opens = 3000
	inside, out, refused := 0, 0, 0
	for range opens {
		r := run(t, f, "guest-file-open", fmt.Sprintf(`{"path":%q}`, root+"/file"), nil)
		if r.err != nil {
			refused++
			continue
		}
		h := strings.TrimSpace(string(r.result))
		data := ok(t, f, "guest-file-read", `{"handle":`+h+`}`, nil).blob
		ok(t, f, "guest-file-close", `{"handle":`+h+`}`, nil)
		switch string(data) {
		case "inside":
			inside++
		case "OUTSIDE":
			out++
		default:
			t.Fatalf("read %q", data)
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d opens during %d swaps: %d read inside, %d outside, %d refused", opens, swaps.Load(), inside, out, refused)
	if out != 0 {
		t.Fatalf("%d of %d opens read outside the allowed root", out, opens)
	}
	if inside == 0 || swaps.Load() < 100 {
		t.Fatalf("the race did not happen: %d inside, %d swaps", inside, swaps.Load())
	}
}
