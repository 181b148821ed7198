// Package debianguest boots a real Debian 12 guest with systemd under QEMU
// (TCG) -- a root filesystem made by mmdebstrap from the mirror this
// machine's apt uses, the host's own kernel and initrd -- installs the
// project's packages from make package in it with dpkg, and checks from the
// host, over the guest's org.qemu.guest_agent.0 port, what a VM owner relies
// on: the service starts on install, at boot and on a hot-plugged port,
// stops with the port and with systemctl, upgrades onto new binaries,
// powers the guest off through systemd, follows plugin packages, and runs
// a fire-and-forget request at once.
package debianguest

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/guestimage"
)

// Suite is the guest's Debian release.
const Suite = "bookworm"

// Packages are what mmdebstrap adds to minbase: systemd as init, udev
// (the port's device unit, the udev rule of the package) and procps.
var Packages = []string{"systemd-sysv", "udev", "procps"}

// imageSize of the root filesystem: minbase with systemd is about 230 MB,
// the agent's packages about 110 MB, twice that while dpkg upgrades them.
const imageSize = "1G"

// guestModules are copied into the root filesystem with what they depend
// on: Debian's initrd (MODULES=most) has virtio_pci, virtio_blk and ext4
// for the root disk, not the virtio-serial driver, which udev loads from
// the root filesystem once the virtio-serial-pci device is seen.
var guestModules = []string{"virtio_console"}

// recipe is what the image is made of besides the packages: changing it
// changes the cache key.
var recipe = map[string]string{
	"/etc/fstab":    "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
	"/etc/hostname": "debianguest\n",
	"/etc/hosts":    "127.0.0.1 localhost\n127.0.1.1 debianguest\n",
	// The serial console is the test's channel into the guest that does
	// not need the agent: root is logged in on it at every boot.
	"/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf": "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I dumb\n",
	// Quiet and plain for a shell driven by a program.
	"/root/.hushlogin": "",
	"/root/.bashrc":    "PS1='' PS2=''\nset +H\nexport LC_ALL=C SYSTEMD_PAGER= SYSTEMD_COLORS=0 PAGER=cat\n",
}

// masked units: timers whose jobs would take dpkg's lock or load the disk
// in the middle of a check.
var masked = []string{"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer"}

// AptSources returns the Debian 12 entries of this machine's apt
// configuration as one-line sources.list entries (deb822 .sources files
// and .list files alike), for mmdebstrap: the guest comes from the mirror
// the machine itself installs from.
func AptSources() ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(uri, suite string, comps []string, signedBy string) {
		if suite != Suite && !strings.HasPrefix(suite, Suite+"-") {
			return
		}
		opt := ""
		if signedBy != "" && !strings.Contains(signedBy, "\n") {
			opt = "[signed-by=" + signedBy + "] "
		}
		line := fmt.Sprintf("deb %s%s %s %s", opt, uri, suite, strings.Join(comps, " "))
		if !seen[line] {
			seen[line] = true
			out = append(out, line)
		}
	}
	var lists []string
	if _, err := os.Stat("/etc/apt/sources.list"); err == nil {
		lists = append(lists, "/etc/apt/sources.list")
	}
	more, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	lists = append(lists, more...)
	for _, f := range lists {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			line, _, _ = strings.Cut(line, "#")
			fields := strings.Fields(line)
			if len(fields) < 3 || fields[0] != "deb" {
				continue
			}
			fields = fields[1:]
			signedBy := ""
			if strings.HasPrefix(fields[0], "[") {
				var opts []string
				for len(fields) > 0 {
					opts = append(opts, strings.Trim(fields[0], "[]"))
					last := strings.HasSuffix(fields[0], "]")
					fields = fields[1:]
					if last {
						break
					}
				}
				for _, o := range opts {
					if v, ok := strings.CutPrefix(o, "signed-by="); ok {
						signedBy = v
					}
				}
			}
			if len(fields) < 2 {
				continue
			}
			add(fields[0], fields[1], fields[2:], signedBy)
		}
	}
	deb822, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range deb822 {
		stanzas, err := parseDeb822(f)
		if err != nil {
			return nil, err
		}
		for _, s := range stanzas {
			if strings.EqualFold(s["enabled"], "no") || !contains(strings.Fields(s["types"]), "deb") {
				continue
			}
			for _, uri := range strings.Fields(s["uris"]) {
				for _, suite := range strings.Fields(s["suites"]) {
					add(uri, suite, strings.Fields(s["components"]), s["signed-by"])
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %s (Debian 12) entry in /etc/apt/sources.list or /etc/apt/sources.list.d", Suite)
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// parseDeb822 reads the stanzas of a deb822 file, field names lower case,
// continuation lines joined with newlines.
func parseDeb822(path string) ([]map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var stanzas []map[string]string
	cur := map[string]string{}
	last := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#"):
		case strings.TrimSpace(line) == "":
			if len(cur) > 0 {
				stanzas = append(stanzas, cur)
				cur = map[string]string{}
			}
			last = ""
		case line[0] == ' ' || line[0] == '\t':
			if last != "" {
				cur[last] += "\n" + strings.TrimSpace(line)
			}
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			last = strings.ToLower(strings.TrimSpace(k))
			cur[last] = strings.TrimSpace(v)
		}
	}
	if len(cur) > 0 {
		stanzas = append(stanzas, cur)
	}
	return stanzas, sc.Err()
}

// RootImage returns a fresh copy (the test writes to it) of the guest's
// root filesystem image, built by mmdebstrap and mkfs.ext4 -d or taken
// from the cache under ~/.cache/guest-agent-tests (GUEST_AGENT_TEST_CACHE
// names another directory, "none" turns the cache off), keyed by
// everything it is made of: the apt sources, the packages, mmdebstrap's
// version, the kernel whose modules it holds and the recipe.
func RootImage(t *testing.T, kver string) string {
	t.Helper()
	sources, err := AptSources()
	if err != nil {
		t.Fatal(err)
	}
	ver, err := exec.Command("mmdebstrap", "--version").Output()
	if err != nil {
		t.Fatalf("mmdebstrap --version (install Debian's mmdebstrap): %v", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "suite %s\nsize %s\nmmdebstrap %s\nkernel %s\n", Suite, imageSize, strings.TrimSpace(string(ver)), kver)
	for _, s := range sources {
		fmt.Fprintf(h, "source %s\n", s)
	}
	fmt.Fprintf(h, "packages %s\nmodules %s\nmasked %s\n", strings.Join(Packages, ","), strings.Join(guestModules, ","), strings.Join(masked, ","))
	keys := make([]string, 0, len(recipe))
	for k := range recipe {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "file %s %q\n", k, recipe[k])
	}
	key := hex.EncodeToString(h.Sum(nil))[:16]

	dst := filepath.Join(t.TempDir(), "root.img")
	cacheDir := os.Getenv("GUEST_AGENT_TEST_CACHE")
	if cacheDir == "" {
		if base, err := os.UserCacheDir(); err == nil {
			cacheDir = filepath.Join(base, "guest-agent-tests")
		}
	}
	if cacheDir == "none" {
		cacheDir = ""
	}
	var cached string
	if cacheDir != "" {
		cached = filepath.Join(cacheDir, "debian12-root-"+key+".img")
		if _, err := os.Stat(cached); err == nil {
			copySparse(t, cached, dst)
			t.Logf("root filesystem image from the cache: %s", cached)
			return dst
		}
	}
	start := time.Now()
	buildRootImage(t, sources, kver, dst)
	t.Logf("root filesystem image built in %s (mmdebstrap from %s)", time.Since(start).Round(100*time.Millisecond), strings.Join(sources, "; "))
	if cached != "" {
		if err := os.MkdirAll(cacheDir, 0o755); err != nil {
			t.Logf("cache: %v", err)
			return dst
		}
		tmp := cached + fmt.Sprintf(".tmp%d", os.Getpid())
		copySparse(t, dst, tmp)
		if err := os.Rename(tmp, cached); err != nil {
			os.Remove(tmp)
			t.Logf("cache: %v", err)
			return dst
		}
		// Images of other inputs are of no more use.
		stale, _ := filepath.Glob(filepath.Join(cacheDir, "debian12-root-*.img"))
		for _, f := range stale {
			if f != cached {
				os.Remove(f)
			}
		}
	}
	return dst
}

func copySparse(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp %s %s: %v\n%s", src, dst, err, out)
	}
}

func buildRootImage(t *testing.T, sources []string, kver, img string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	args := []string{"--variant=minbase", "--include=" + strings.Join(Packages, ","), Suite, root}
	args = append(args, sources...)
	cmd := exec.Command("mmdebstrap", args...)
	out, err := runBounded(cmd, 6*time.Minute)
	if err != nil {
		t.Fatalf("mmdebstrap %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	defer os.RemoveAll(root)

	// The modules with what they depend on, at their paths, and the
	// module indexes made for them (depmod -b): udev's modalias lookup
	// finds virtio_console there.
	moddir := filepath.Join("/lib/modules", kver)
	for _, name := range guestModules {
		out, err := exec.Command("modprobe", "-S", kver, "--show-depends", name).CombinedOutput()
		if err != nil {
			t.Fatalf("modprobe --show-depends %s (install kmod and linux-image-amd64): %v\n%s", name, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "insmod" {
				continue
			}
			rel, err := filepath.Rel(moddir, f[1])
			if err != nil || strings.HasPrefix(rel, "..") {
				t.Fatalf("module %s is not under %s", f[1], moddir)
			}
			guestimage.CopyFile(t, f[1], filepath.Join(root, "usr/lib/modules", kver, rel), 0o644)
		}
	}
	for _, f := range []string{"modules.order", "modules.builtin", "modules.builtin.modinfo"} {
		guestimage.CopyFile(t, filepath.Join(moddir, f), filepath.Join(root, "usr/lib/modules", kver, f), 0o644)
	}
	if out, err := exec.Command("depmod", "-b", root, kver).CombinedOutput(); err != nil {
		t.Fatalf("depmod -b %s %s: %v\n%s", root, kver, err, out)
	}
	for path, data := range recipe {
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "mnt/debs"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, u := range masked {
		p := filepath.Join(root, "etc/systemd/system", u)
		_ = os.Remove(p)
		if err := os.Symlink("/dev/null", p); err != nil {
			t.Fatal(err)
		}
		_ = os.Remove(filepath.Join(root, "etc/systemd/system/timers.target.wants", u))
	}
	if out, err := runBounded(exec.Command("mkfs.ext4", "-q", "-F", "-L", "guestroot", "-d", root, img, imageSize), 3*time.Minute); err != nil {
		t.Fatalf("mkfs.ext4 -d (install e2fsprogs): %v\n%s", err, out)
	}
}

// DebsImage makes an ext4 image holding each directory of dirs (name ->
// host directory) with the .deb files in it, for the guest's /mnt/debs.
func DebsImage(t *testing.T, dirs map[string]string) string {
	t.Helper()
	tree := filepath.Join(t.TempDir(), "debs")
	for name, src := range dirs {
		debs, _ := filepath.Glob(filepath.Join(src, "*.deb"))
		if len(debs) == 0 {
			t.Fatalf("no .deb in %s: run make package", src)
		}
		for _, d := range debs {
			guestimage.CopyFile(t, d, filepath.Join(tree, name, filepath.Base(d)), 0o644)
		}
	}
	img := filepath.Join(t.TempDir(), "debs.img")
	if out, err := runBounded(exec.Command("mkfs.ext4", "-q", "-F", "-L", "debs", "-d", tree, img, "256M"), 2*time.Minute); err != nil {
		t.Fatalf("mkfs.ext4 -d: %v\n%s", err, out)
	}
	return img
}

// runBounded runs cmd, killed after limit.
func runBounded(cmd *exec.Cmd, limit time.Duration) ([]byte, error) {
	var buf strings.Builder
	cmd.Stdout, cmd.Stderr = &buf, &buf
	// Its own process group: mmdebstrap's apt and dpkg go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return []byte(buf.String()), err
	case <-time.After(limit):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return []byte(buf.String()), fmt.Errorf("%s: killed after %s", cmd.Path, limit)
	}
}
