// Package guestimage builds what the VM tests boot: Debian's kernel from
// /boot and an uncompressed busybox initramfs (TCG decompresses slowly)
// holding the kernel modules they need, the agent's static binaries and,
// for the side-by-side runs, Debian's dynamically linked qemu-ga with the
// libraries it loads.
package guestimage

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// KernelVersion is the newest kernel in /boot (Debian's linux-image-amd64).
func KernelVersion(t testing.TB) string {
	t.Helper()
	entries, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(entries) == 0 {
		t.Fatal("no kernel in /boot: install Debian's linux-image-amd64")
	}
	sort.Strings(entries)
	return strings.TrimPrefix(filepath.Base(entries[len(entries)-1]), "vmlinuz-")
}

// Kernel is the path of the kernel image of version kver.
func Kernel(kver string) string { return "/boot/vmlinuz-" + kver }

// CopyFile copies src to dst (creating dst's directory) with mode.
func CopyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// Image is an initramfs tree being filled; Archive packs it.
type Image struct {
	t       testing.TB
	Root    string
	modules int
}

// New starts an image with the static busybox at /bin/busybox and the
// usual empty directories; the caller adds /init.
func New(t testing.TB) *Image {
	t.Helper()
	im := &Image{t: t, Root: t.TempDir()}
	busybox := "/bin/busybox"
	if out, err := exec.Command("file", "-L", busybox).Output(); err == nil && !bytes.Contains(out, []byte("static")) {
		t.Fatalf("%s is not static: install busybox-static", busybox)
	}
	im.Copy(busybox, "/bin/busybox", 0o755)
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "sbin", "usr/bin", "usr/sbin", "etc", "root"} {
		im.Mkdir("/"+d, 0o755)
	}
	return im
}

func (im *Image) path(dst string) string { return filepath.Join(im.Root, dst) }

// Mkdir creates dst (and its parents) in the image.
func (im *Image) Mkdir(dst string, mode os.FileMode) {
	im.t.Helper()
	if err := os.MkdirAll(im.path(dst), mode); err != nil {
		im.t.Fatal(err)
	}
	if err := os.Chmod(im.path(dst), mode); err != nil {
		im.t.Fatal(err)
	}
}

// Copy copies a host file into the image at dst.
func (im *Image) Copy(src, dst string, mode os.FileMode) {
	im.t.Helper()
	CopyFile(im.t, src, im.path(dst), mode)
}

// Write writes data into the image at dst.
func (im *Image) Write(dst string, data string, mode os.FileMode) {
	im.t.Helper()
	if err := os.MkdirAll(filepath.Dir(im.path(dst)), 0o755); err != nil {
		im.t.Fatal(err)
	}
	if err := os.WriteFile(im.path(dst), []byte(data), mode); err != nil {
		im.t.Fatal(err)
	}
}

// Symlink makes dst a symbolic link to target.
func (im *Image) Symlink(target, dst string) {
	im.t.Helper()
	if err := os.MkdirAll(filepath.Dir(im.path(dst)), 0o755); err != nil {
		im.t.Fatal(err)
	}
	if err := os.Symlink(target, im.path(dst)); err != nil {
		im.t.Fatal(err)
	}
}

// AddModules copies the named kernel modules of kver, each after the
// modules it depends on (modprobe --show-depends, so kmod must be
// installed), to /lib/modules/NN-name.ko: a shell glob over
// /lib/modules/*.ko then loads them in order with busybox insmod. A module
// already added is skipped; one built into the kernel adds nothing.
func (im *Image) AddModules(kver string, names ...string) {
	im.t.Helper()
	have := map[string]bool{}
	existing, _ := filepath.Glob(im.path("/lib/modules/*.ko"))
	for _, e := range existing {
		base := filepath.Base(e)
		have[base[strings.IndexByte(base, '-')+1:]] = true
	}
	for _, name := range names {
		out, err := exec.Command("modprobe", "-S", kver, "--show-depends", name).CombinedOutput()
		if err != nil {
			im.t.Fatalf("modprobe --show-depends %s (install kmod and linux-image-amd64): %v\n%s", name, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "insmod" {
				continue // "builtin ..." and blank lines
			}
			src := f[1]
			if !strings.HasSuffix(src, ".ko") {
				im.t.Fatalf("module %s is compressed: busybox insmod loads plain .ko files only", src)
			}
			base := filepath.Base(src)
			if have[base] {
				continue
			}
			have[base] = true
			im.Copy(src, fmt.Sprintf("/lib/modules/%02d-%s", im.modules, base), 0o644)
			im.modules++
		}
	}
}

// AddAgent installs the agent as a package would: guest-agent in dir and
// every guest-agent-* file from bin, the plugins and what lies beside them
// (but the XenStore exchange's, which a KVM guest has no use for), in
// pluginDir. With pluginDir == dir the
// plugins lie next to the supervisor.
func (im *Image) AddAgent(bin, dir, pluginDir string) {
	im.t.Helper()
	entries, err := os.ReadDir(bin)
	if err != nil {
		im.t.Fatal(err)
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			im.t.Fatal(err)
		}
		switch {
		case e.Name() == "guest-agent":
			im.Copy(filepath.Join(bin, e.Name()), filepath.Join(dir, e.Name()), info.Mode().Perm())
		case strings.HasPrefix(e.Name(), "guest-agent-") && !strings.Contains(e.Name(), "xenstore"):
			// Plugins and whatever make build puts beside them.
			im.Copy(filepath.Join(bin, e.Name()), filepath.Join(pluginDir, e.Name()), info.Mode().Perm())
		}
	}
}

// AddDynamic copies a dynamically linked program to the same path in the
// image, with every library ldd lists and the dynamic loader, each at the
// path ldd resolved (so the loader's default search path finds them).
func (im *Image) AddDynamic(program string) {
	im.t.Helper()
	im.Copy(program, program, 0o755)
	out, err := exec.Command("ldd", program).CombinedOutput()
	if err != nil {
		im.t.Fatalf("ldd %s: %v\n%s", program, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0] // the loader
		default:
			continue // linux-vdso
		}
		// Debian's /lib is a symlink to usr/lib: the loader and its
		// search path use the /lib names, which are plain directories here.
		if _, err := os.Stat(im.path(lib)); err == nil {
			continue
		}
		im.Copy(lib, lib, 0o755)
	}
}

// Archive packs the tree into an uncompressed newc cpio archive.
func (im *Image) Archive() string {
	im.t.Helper()
	archive := filepath.Join(im.t.TempDir(), "initramfs.cpio")
	cmd := exec.Command("sh", "-c", "find . | cpio -o -H newc --quiet > "+archive)
	cmd.Dir = im.Root
	if out, err := cmd.CombinedOutput(); err != nil {
		im.t.Fatalf("cpio (install cpio): %v\n%s", err, out)
	}
	return archive
}
