package main

// The packages of make package, read back with the distributions' own
// tools: dpkg-deb for the .deb files, rpm for the .rpm files. Run by make
// package-test (part of make test) after make package; without dist/ they
// are skipped and say so.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	modeBin  = "-rwxr-xr-x"
	modeFile = "-rw-r--r--"
	modeDir  = "drwxr-xr-x"
	pluginsD = "/usr/lib/guest-agent/plugins/"
)

// expected is what one package must hold and declare.
type expected struct {
	name  string
	files map[string]string // path → mode, on both packagers
	// debOnly, rpmOnly: files of one packager only (zsh's directory).
	debOnly, rpmOnly map[string]string
	// extra: other files allowed (a subcommand's man page), by pattern.
	extra                                    *regexp.Regexp
	depends, provides, conflicts, recommends []string
	debReplaces                              []string
	conffiles                                []string
	debScripts                               []string // control files
	rpmScripts                               []string // rpm --scripts headers
}

func completions(cmd string) (all, deb, rpm map[string]string) {
	return map[string]string{
			"/usr/share/bash-completion/completions/" + cmd:         modeFile,
			"/usr/share/fish/vendor_completions.d/" + cmd + ".fish": modeFile,
		}, map[string]string{"/usr/share/zsh/vendor-completions/_" + cmd: modeFile},
		map[string]string{"/usr/share/zsh/site-functions/_" + cmd: modeFile}
}

func withPlugins(files map[string]string, names ...string) map[string]string {
	for _, n := range names {
		files[pluginsD+"guest-agent-"+n] = modeBin
		files[pluginsD+"guest-agent-"+n+".manifest"] = modeFile
	}
	return files
}

var usualPlugins = []string{"guest-agent-plugin-files", "guest-agent-plugin-exec", "guest-agent-plugin-system", "guest-agent-plugin-network"}

func expectations() []expected {
	coreAll, coreDeb, coreRPM := completions("guest-agent")
	for k, v := range withPlugins(map[string]string{
		"/usr/sbin/guest-agent":                       modeBin,
		"/usr/lib/systemd/system/guest-agent.service": modeFile,
		"/usr/lib/udev/rules.d/60-guest-agent.rules":  modeFile,
		"/etc/guest-agent/agent.hcl":                  modeFile,
		"/etc/guest-agent/freeze.d":                   modeDir,
		"/usr/share/man/man8/guest-agent.8.gz":        modeFile,
		"/usr/share/man/man5/agent.hcl.5.gz":          modeFile,
	}, "parser-json", "exchange-virtio") {
		coreAll[k] = v
	}
	ctlAll, ctlDeb, ctlRPM := completions("guestctl")
	ctlAll["/usr/bin/guestctl"] = modeBin
	ctlAll["/usr/share/man/man1/guestctl.1.gz"] = modeFile
	pluginPkg := func(short, bin string) expected {
		return expected{
			name: "guest-agent-plugin-" + short, files: withPlugins(map[string]string{}, bin),
			depends: []string{"guest-agent-plugin-abi-1"},
		}
	}
	xen := pluginPkg("xenstore", "exchange-xenstore")
	xen.files["/usr/lib/systemd/system/guest-agent-xen.service"] = modeFile
	xen.recommends = []string{"guest-agent-plugin-nova"}
	xen.debScripts = []string{"postinst", "prerm", "postrm"}
	xen.rpmScripts = []string{"postinstall", "preuninstall", "postuninstall"}
	return []expected{
		{
			name: "guest-agent", files: coreAll, debOnly: coreDeb, rpmOnly: coreRPM,
			extra:      regexp.MustCompile(`^/usr/share/man/man8/guest-agent-[a-z-]+\.8\.gz$`),
			provides:   []string{"guest-agent-plugin-abi-1", "qemu-guest-agent"},
			conflicts:  []string{"qemu-guest-agent"},
			recommends: usualPlugins, debReplaces: []string{"qemu-guest-agent"},
			conffiles:  []string{"/etc/guest-agent/agent.hcl"},
			debScripts: []string{"postinst", "prerm", "postrm"},
			rpmScripts: []string{"postinstall", "preuninstall", "postuninstall"},
		},
		{
			name: "guestctl", files: ctlAll, debOnly: ctlDeb, rpmOnly: ctlRPM,
			extra: regexp.MustCompile(`^/usr/share/man/man1/guestctl-[a-z-]+\.1\.gz$`),
		},
		pluginPkg("files", "cmd-files"),
		pluginPkg("exec", "cmd-exec"),
		pluginPkg("system", "cmd-system"),
		pluginPkg("network", "cmd-network"),
		pluginPkg("nova", "cmd-nova"),
		xen,
		{
			name: "guest-agent-full", files: map[string]string{},
			depends: []string{"guest-agent", "guest-agent-plugin-files", "guest-agent-plugin-exec", "guest-agent-plugin-system",
				"guest-agent-plugin-network", "guest-agent-plugin-nova", "guest-agent-plugin-xenstore"},
		},
	}
}

// distDir is dist/ of make package, or skips the test when it was not built.
func distDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("GUEST_AGENT_DIST")
	if dir == "" {
		dir = "../dist"
	}
	if debs, _ := filepath.Glob(filepath.Join(dir, "*.deb")); len(debs) == 0 {
		t.Skipf("no packages in %s: dist/ not built (make package-test runs make package, then this test)", dir)
	}
	return dir
}

func debArch() string { return runtime.GOARCH }

func rpmArch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	case "386":
		return "i386"
	}
	return runtime.GOARCH
}

// find returns the one package file of name in dir.
func find(t *testing.T, dir, name, packager string) string {
	t.Helper()
	pattern := name + "_*_" + debArch() + ".deb"
	if packager == "rpm" {
		pattern = name + "-[0-9]*." + rpmArch() + ".rpm"
	}
	m, _ := filepath.Glob(filepath.Join(dir, pattern))
	if len(m) != 1 {
		t.Fatalf("%s %s: %d files match %s in %s, want 1", packager, name, len(m), pattern, dir)
	}
	return m[0]
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr)
	}
	return string(out)
}

var installRPM sync.Once

// needRPM makes sure rpm(8) is there: Debian's rpm package reads .rpm files;
// as root on Debian it is installed when missing.
func needRPM(t *testing.T) {
	t.Helper()
	installRPM.Do(func() {
		if _, err := exec.LookPath("rpm"); err == nil {
			return
		}
		if os.Geteuid() != 0 {
			return
		}
		if _, err := exec.LookPath("apt-get"); err != nil {
			return
		}
		cmd := exec.Command("apt-get", "install", "-y", "-q", "--no-install-recommends", "rpm")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("apt-get install rpm: %v\n%s", err, out)
		}
	})
	if _, err := exec.LookPath("rpm"); err != nil {
		t.Fatal("rpm is not installed (Debian's rpm package) and could not be installed: apt-get install rpm")
	}
}

// list splits a control field or rpm's lines into names (relations keep
// their version: "guest-agent (= 1.0-1)").
func list(s, sep string) []string {
	var out []string
	for _, f := range strings.Split(s, sep) {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

func version(t *testing.T, dir string) string {
	t.Helper()
	return strings.TrimSpace(run(t, "dpkg-deb", "-f", find(t, dir, "guest-agent", "deb"), "Version"))
}

// debFiles reads dpkg-deb --contents: path → mode ("-rwxr-xr-x"); owner
// root/root checked on the way.
func debFiles(t *testing.T, deb string) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(run(t, "dpkg-deb", "--contents", deb)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		if f[1] != "root/root" {
			t.Errorf("%s: %s owned by %s", filepath.Base(deb), f[5], f[1])
		}
		path := strings.TrimSuffix(strings.TrimPrefix(f[5], "."), "/")
		if path == "" {
			continue
		}
		files[path] = f[0]
	}
	return files
}

// rpmFiles reads rpm -qlvp: path → mode.
func rpmFiles(t *testing.T, rpm string) map[string]string {
	t.Helper()
	files := map[string]string{}
	out := strings.TrimSpace(run(t, "rpm", "-qlvp", rpm))
	if out == "(contains no files)" {
		return files
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 9 {
			t.Fatalf("rpm -qlvp %s: %q", rpm, line)
		}
		if f[2] != "root" || f[3] != "root" {
			t.Errorf("%s: %s owned by %s:%s", filepath.Base(rpm), f[8], f[2], f[3])
		}
		files[f[8]] = f[0]
	}
	return files
}

// checkFiles compares what a package holds with what it must: every file
// with its mode, and nothing else but the directories on the way and the
// extra pattern.
func checkFiles(t *testing.T, pkg string, got map[string]string, e expected, only map[string]string) {
	t.Helper()
	want := map[string]string{}
	for k, v := range e.files {
		want[k] = v
	}
	for k, v := range only {
		want[k] = v
	}
	for path, mode := range want {
		if g, ok := got[path]; !ok {
			t.Errorf("%s: %s missing", pkg, path)
		} else if g != mode {
			t.Errorf("%s: %s has mode %s, want %s", pkg, path, g, mode)
		}
	}
	for path, mode := range got {
		if _, ok := want[path]; ok {
			continue
		}
		switch {
		case strings.HasPrefix(mode, "d"):
			if mode != modeDir {
				t.Errorf("%s: directory %s has mode %s", pkg, path, mode)
			}
		case e.extra != nil && e.extra.MatchString(path):
			if mode != modeFile {
				t.Errorf("%s: %s has mode %s, want %s", pkg, path, mode, modeFile)
			}
		default:
			t.Errorf("%s: unexpected file %s (%s)", pkg, path, mode)
		}
	}
}

func TestDebPackages(t *testing.T) {
	dir := distDir(t)
	ver := version(t, dir)
	for _, e := range expectations() {
		t.Run(e.name, func(t *testing.T) {
			deb := find(t, dir, e.name, "deb")
			base := filepath.Base(deb)
			field := func(name string) string {
				return strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, name))
			}
			if got := field("Package"); got != e.name {
				t.Errorf("%s: Package %q", base, got)
			}
			if got := field("Version"); got != ver {
				t.Errorf("%s: Version %q, want %q (the core's)", base, got, ver)
			}
			if got := field("Architecture"); got != debArch() {
				t.Errorf("%s: Architecture %q, want %q", base, got, debArch())
			}
			depends := e.depends
			if e.name == "guest-agent-full" {
				depends = nil
				for _, d := range e.depends {
					depends = append(depends, d+" (= "+ver+")")
				}
			}
			for _, rel := range []struct {
				field string
				want  []string
			}{
				{"Depends", depends}, {"Provides", e.provides}, {"Conflicts", e.conflicts},
				{"Replaces", e.debReplaces}, {"Recommends", e.recommends},
			} {
				if got, want := list(field(rel.field), ","), sorted(rel.want); !slices.Equal(got, want) {
					t.Errorf("%s: %s %q, want %q", base, rel.field, got, want)
				}
			}
			checkFiles(t, base, debFiles(t, deb), e, e.debOnly)

			ctrl := t.TempDir()
			run(t, "dpkg-deb", "--control", deb, ctrl)
			conffiles, _ := os.ReadFile(filepath.Join(ctrl, "conffiles"))
			if got, want := list(string(conffiles), "\n"), sorted(e.conffiles); !slices.Equal(got, want) {
				t.Errorf("%s: conffiles %q, want %q", base, got, want)
			}
			for _, s := range []string{"preinst", "postinst", "prerm", "postrm"} {
				path := filepath.Join(ctrl, s)
				st, err := os.Stat(path)
				if want := slices.Contains(e.debScripts, s); want != (err == nil) {
					t.Errorf("%s: maintainer script %s present: %v, want %v", base, s, err == nil, want)
					continue
				}
				if err != nil {
					continue
				}
				if st.Mode().Perm() != 0o755 {
					t.Errorf("%s: %s has mode %v", base, s, st.Mode().Perm())
				}
				if out, err := exec.Command("sh", "-n", path).CombinedOutput(); err != nil {
					t.Errorf("%s: %s is not valid sh: %v\n%s", base, s, err, out)
				}
			}
			triggers, _ := os.ReadFile(filepath.Join(ctrl, "triggers"))
			// None: the agents follow the plugin directory themselves.
			if got := strings.TrimSpace(string(triggers)); got != "" {
				t.Errorf("%s: dpkg triggers %q", base, got)
			}
		})
	}
}

// What the core's maintainer scripts do, in words a reader can check: a first
// install starts the agent at once, an upgrade restarts it, a removal stops
// it, a purge removes its state, a plugin package's files restart it.
func TestDebCoreScripts(t *testing.T) {
	dir := distDir(t)
	ctrl := t.TempDir()
	run(t, "dpkg-deb", "--control", find(t, dir, "guest-agent", "deb"), ctrl)
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(ctrl, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for script, wants := range map[string][]string{
		"postinst": {
			"udevadm control --reload-rules",
			"udevadm trigger --subsystem-match=virtio-ports --action=add",
			"systemctl try-restart guest-agent.service",
			"systemctl start guest-agent.service",
		},
		"prerm":  {"remove|deconfigure)", "systemctl stop guest-agent.service"},
		"postrm": {"purge)", "rm -rf /var/lib/guest-agent /run/guest-agent"},
	} {
		text := read(script)
		for _, w := range wants {
			if !strings.Contains(text, w) {
				t.Errorf("%s lacks %q", script, w)
			}
		}
	}
}

// rpmQuery runs rpm -qp with a query format over one package.
func rpmQuery(t *testing.T, rpm string, args ...string) string {
	t.Helper()
	return run(t, "rpm", append([]string{"-qp"}, append(args, rpm)...)...)
}

func TestRPMPackages(t *testing.T) {
	dir := distDir(t)
	needRPM(t)
	ver := strings.TrimSuffix(version(t, dir), "-1")
	for _, e := range expectations() {
		t.Run(e.name, func(t *testing.T) {
			rpm := find(t, dir, e.name, "rpm")
			base := filepath.Base(rpm)
			if got := rpmQuery(t, rpm, "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}"); got != e.name+" "+ver+" 1 "+rpmArch() {
				t.Errorf("%s: %q, want name, version, release and arch %q", base, got, e.name+" "+ver+" 1 "+rpmArch())
			}
			depends := e.depends
			if e.name == "guest-agent-full" {
				depends = nil
				for _, d := range e.depends {
					depends = append(depends, d+" = "+ver+"-1")
				}
			}
			// rpm provides the package's own name and version too.
			provides := append(slices.Clone(e.provides), e.name+" = "+ver+"-1")
			for _, rel := range []struct {
				flag string
				want []string
			}{
				{"--requires", depends}, {"--provides", provides}, {"--conflicts", e.conflicts},
				{"--obsoletes", nil}, {"--recommends", e.recommends},
			} {
				if got, want := list(rpmQuery(t, rpm, rel.flag), "\n"), sorted(rel.want); !slices.Equal(got, want) {
					t.Errorf("%s: %s %q, want %q", base, rel.flag, got, want)
				}
			}
			checkFiles(t, base, rpmFiles(t, rpm), e, e.rpmOnly)

			var conf []string
			for _, line := range list(rpmQuery(t, rpm, "--qf", `[%{FILENAMES} %{FILEFLAGS:fflags}\n]`), "\n") {
				if path, flags, _ := strings.Cut(line, " "); strings.Contains(flags, "c") {
					if !strings.Contains(flags, "n") {
						t.Errorf("%s: %s is %%config but not noreplace (%s)", base, path, flags)
					}
					conf = append(conf, path)
				}
			}
			if got, want := sorted(conf), sorted(e.conffiles); !slices.Equal(got, want) {
				t.Errorf("%s: config files %q, want %q", base, got, want)
			}
			scripts := rpmQuery(t, rpm, "--scripts")
			for _, s := range []string{"preinstall", "postinstall", "preuninstall", "postuninstall"} {
				if got, want := strings.Contains(scripts, s+" scriptlet"), slices.Contains(e.rpmScripts, s); got != want {
					t.Errorf("%s: %s scriptlet present: %v, want %v", base, s, got, want)
				}
			}
		})
	}
}

// The whole set installs as one rpm transaction (every relation met, no
// conflict among them), and a plugin package alone needs the core's plugin
// protocol.
func TestRPMTransaction(t *testing.T) {
	dir := distDir(t)
	needRPM(t)
	root := t.TempDir()
	run(t, "rpm", "--root", root, "--initdb")
	all, _ := filepath.Glob(filepath.Join(dir, "*."+rpmArch()+".rpm"))
	if out, err := exec.Command("rpm", append([]string{"--root", root, "-i", "--test", "--ignorearch"}, all...)...).CombinedOutput(); err != nil {
		t.Errorf("rpm -i --test of every package: %v\n%s", err, out)
	}
	out, err := exec.Command("rpm", "--root", root, "-i", "--test", "--ignorearch", find(t, dir, "guest-agent-plugin-files", "rpm")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "guest-agent-plugin-abi-1 is needed") {
		t.Errorf("a plugin package without the core: %v\n%s", err, out)
	}
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

var (
	extractOnce sync.Once
	extracted   string // removed by TestMain
	extractErr  error
)

// extract unpacks every .deb of dist into one root, as apt would install
// them (once for all tests; none writes into it).
func extract(t *testing.T, dir string) string {
	t.Helper()
	extractOnce.Do(func() {
		if extracted, extractErr = os.MkdirTemp("", "gapkgroot"); extractErr != nil {
			return
		}
		debs, _ := filepath.Glob(filepath.Join(dir, "*_"+debArch()+".deb"))
		for _, deb := range debs {
			if out, err := exec.Command("dpkg-deb", "-x", deb, extracted).CombinedOutput(); err != nil {
				extractErr = fmt.Errorf("dpkg-deb -x %s: %v\n%s", deb, err, out)
				return
			}
		}
	})
	if extractErr != nil {
		t.Fatal(extractErr)
	}
	return extracted
}

// The packages hold exactly the binaries make build made (a manifest names
// its binary by Go build id and size: a rewritten binary would make it
// stale), the rpm the same bytes as the deb, and every packaged manifest
// describes its packaged binary.
func TestPackagedBinariesAreTheBuiltOnes(t *testing.T) {
	dir := distDir(t)
	needRPM(t)
	bin := os.Getenv("GUEST_AGENT_BIN")
	if bin == "" {
		bin = "../bin"
	}
	root := extract(t, dir)
	digests := map[string]string{} // path → sha256, from the rpms
	rpms, _ := filepath.Glob(filepath.Join(dir, "*."+rpmArch()+".rpm"))
	for _, rpm := range rpms {
		out := strings.TrimSpace(rpmQuery(t, rpm, "--dump"))
		if out == "(contains no files)" {
			continue
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) >= 4 {
				digests[f[0]] = f[3]
			}
		}
	}
	bins, _ := filepath.Glob(filepath.Join(bin, "guest-agent*"))
	bins = append(bins, filepath.Join(bin, "guestctl"))
	var plugins []string
	for _, b := range bins {
		name := filepath.Base(b)
		var path string
		switch {
		case name == "guest-agent":
			path = "/usr/sbin/guest-agent"
		case name == "guestctl":
			path = "/usr/bin/guestctl"
		default:
			path = pluginsD + name
			if !strings.HasSuffix(name, ".manifest") {
				plugins = append(plugins, filepath.Join(root, path))
			}
		}
		want := sha256File(t, b)
		if got := sha256File(t, filepath.Join(root, path)); got != want {
			t.Errorf("%s in the deb differs from %s", path, b)
		}
		if got := digests[path]; got != want {
			t.Errorf("%s in the rpm has SHA-256 %q, %s has %s", path, got, b, want)
		}
	}
	if len(plugins) < 8 {
		t.Fatalf("%d plugins in the packages, want every in-tree one", len(plugins))
	}
	cmd := exec.Command(filepath.Join(root, "usr/sbin/guest-agent"), append([]string{"manifest", "--check"}, plugins...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("guest-agent manifest --check of the packaged plugins: %v\n%s", err, out)
	}
}

// optionLine is an option commented out in the shipped agent.hcl: "#" then
// the option at column 0 ("#state_dir", "#}"), or "#  " inside a block.
var optionLine = regexp.MustCompile(`(?m)^#([a-z}]|  )`)

// uncomment turns every option of the shipped file on, with its default.
func uncomment(hcl string) string { return optionLine.ReplaceAllString(hcl, "$1") }

// The conffile parses as shipped, and with every option uncommented: the
// names and the syntax of the defaults it shows are real.
func TestConffileParses(t *testing.T) {
	dir := distDir(t)
	root := extract(t, dir)
	agent := filepath.Join(root, "usr/sbin/guest-agent")
	shipped := filepath.Join(root, "etc/guest-agent/agent.hcl")
	if out, err := exec.Command(agent, "-c", shipped, "config", "dump").CombinedOutput(); err != nil {
		t.Fatalf("guest-agent -c agent.hcl config dump: %v\n%s", err, out)
	}
	text, err := os.ReadFile(shipped)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(text), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			t.Errorf("agent.hcl sets something instead of showing it commented out: %q", line)
		}
	}
	on := filepath.Join(t.TempDir(), "agent.hcl")
	if err := os.WriteFile(on, []byte(uncomment(string(text))), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(agent, "-c", on, "config", "dump").CombinedOutput()
	if err != nil {
		t.Fatalf("agent.hcl with every option uncommented: %v\n%s", err, out)
	}
	for _, want := range []string{`state_dir           = "/var/lib/guest-agent"`, `fsfreeze_max         = "10m"`,
		`channel "qga"`, `plugin "cmd-exec"`, `kill_on_exit`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("uncommented agent.hcl: dump lacks %q:\n%s", want, out)
		}
	}
}

// qga is a minimal client of the agent's qga socket.
type qga struct {
	c net.Conn
	r *bufio.Reader
}

func (q *qga) call(t *testing.T, req string) json.RawMessage {
	t.Helper()
	_ = q.c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := q.c.Write([]byte(req + "\n")); err != nil {
		t.Fatal(err)
	}
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		t.Fatalf("%s: %v", req, err)
	}
	var reply struct {
		Return json.RawMessage `json:"return"`
		Error  *struct{ Class, Desc string }
	}
	if err := json.Unmarshal(line, &reply); err != nil || reply.Error != nil {
		t.Fatalf("%s: %s", req, line)
	}
	return reply.Return
}

// The agent as installed from the packages, configured with every option of
// the shipped agent.hcl uncommented (its channel moved to a socket here):
// guest-info lists every installed plugin's commands from the packaged
// manifests, and each command plugin accepts the options the file shows.
func TestPackagedAgentRuns(t *testing.T) {
	dir := distDir(t)
	root := extract(t, dir)
	work, err := os.MkdirTemp("", "gapkg") // socket paths stay short
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	text, err := os.ReadFile(filepath.Join(root, "etc/guest-agent/agent.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.ReplaceAll(uncomment(string(text)), "/run/guest-agent.sock", filepath.Join(work, "local.sock"))
	if err := os.WriteFile(filepath.Join(work, "agent.hcl"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(work, "qga.sock")
	var log bytes.Buffer
	cmd := exec.Command(filepath.Join(root, "usr/sbin/guest-agent"), "-c", filepath.Join(work, "agent.hcl"),
		"-m", "unix-listen", "-p", sock, "-t", filepath.Join(work, "state"), "--runtime-dir", filepath.Join(work, "run"),
		"--plugin-dir", filepath.Join(root, pluginsD))
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Error("the agent did not stop within 10 s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", log.String())
		}
	}()
	var c net.Conn
	for deadline := time.Now().Add(15 * time.Second); ; {
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the packaged agent does not listen on %s: %v", sock, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer c.Close()
	q := &qga{c: c, r: bufio.NewReader(c)}

	var info struct {
		Commands []struct{ Name string } `json:"supported_commands"`
	}
	if err := json.Unmarshal(q.call(t, `{"execute":"guest-info"}`), &info); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range info.Commands {
		names = append(names, c.Name)
	}
	for _, want := range []string{"guest-ping", "guest-file-open", "guest-exec", "guest-get-host-name",
		"guest-fsfreeze-status", "guest-network-get-interfaces"} {
		if !slices.Contains(names, want) {
			t.Errorf("guest-info of the packaged agent lacks %s", want)
		}
	}
	q.call(t, `{"execute":"guest-get-host-name"}`)
	q.call(t, `{"execute":"guest-network-get-interfaces"}`)
	var handle int
	if err := json.Unmarshal(q.call(t, `{"execute":"guest-file-open","arguments":{"path":"/etc/hostname"}}`), &handle); err != nil {
		t.Fatal(err)
	}
	q.call(t, `{"execute":"guest-file-close","arguments":{"handle":`+strconv.Itoa(handle)+`}}`)
	q.call(t, `{"execute":"guest-exec","arguments":{"path":"/bin/true"}}`)
	if strings.Contains(log.String(), "manifest ignored") {
		t.Errorf("a packaged manifest was not believed:\n%s", log.String())
	}
}

// The template of README "Packaging" makes a third party's plugin package
// that depends on the core's plugin protocol, holds the binary and its
// manifest, and restarts the agents on rpm.
func TestThirdPartyTemplate(t *testing.T) {
	dir := distDir(t)
	needRPM(t)
	nfpm := os.Getenv("NFPM")
	if nfpm == "" {
		nfpm = "nfpm"
	}
	if _, err := exec.LookPath(nfpm); err != nil {
		t.Fatalf("nfpm not found (%s): make tools installs it", nfpm)
	}
	root := extract(t, dir)
	work := t.TempDir()
	for _, f := range []string{"nfpm.yaml"} {
		b, err := os.ReadFile(filepath.Join("third-party", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(work, f), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A plugin of another module, like a third party's: the e2e test plugin.
	goCmd := os.Getenv("GO") // make's Go, which need not be on PATH
	if goCmd == "" {
		goCmd = "go"
	}
	build := exec.Command(goCmd, "build", "-o", filepath.Join(work, "guest-agent-cmd-test"), "../tests/testplugin")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the test plugin: %v\n%s", err, out)
	}
	if out, err := exec.Command(filepath.Join(root, "usr/sbin/guest-agent"), "manifest", "--write",
		filepath.Join(work, "guest-agent-cmd-test")).CombinedOutput(); err != nil {
		t.Fatalf("guest-agent manifest --write: %v\n%s", err, out)
	}
	for _, packager := range []string{"deb", "rpm"} {
		cmd := exec.Command(nfpm, "package", "-f", "nfpm.yaml", "-p", packager, "-t", work)
		cmd.Dir = work
		cmd.Env = append(os.Environ(), "PLUGIN=cmd-test", "VERSION=1.2.3", "ARCH="+runtime.GOARCH)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nfpm %s of the template: %v\n%s", packager, err, out)
		}
	}
	e := expected{name: "guest-agent-plugin-cmd-test", files: withPlugins(map[string]string{}, "cmd-test")}
	deb := find(t, work, e.name, "deb")
	if got := strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, "Depends")); got != "guest-agent-plugin-abi-1" {
		t.Errorf("third-party deb: Depends %q", got)
	}
	checkFiles(t, filepath.Base(deb), debFiles(t, deb), e, nil)
	rpm := find(t, work, e.name, "rpm")
	if got := list(rpmQuery(t, rpm, "--requires"), "\n"); !slices.Equal(got, []string{"guest-agent-plugin-abi-1"}) {
		t.Errorf("third-party rpm: requires %q", got)
	}
	checkFiles(t, filepath.Base(rpm), rpmFiles(t, rpm), e, nil)
	// No scripts: the agents take the plugin up by themselves.
	if scripts := strings.TrimSpace(rpmQuery(t, rpm, "--scripts")); scripts != "" {
		t.Errorf("third-party rpm has scripts:\n%s", scripts)
	}
	// And the packaged plugin's manifest describes the packaged binary.
	into := t.TempDir()
	run(t, "dpkg-deb", "-x", deb, into)
	if out, err := exec.Command(filepath.Join(root, "usr/sbin/guest-agent"), "manifest", "--check",
		filepath.Join(into, pluginsD, "guest-agent-cmd-test")).CombinedOutput(); err != nil {
		t.Errorf("manifest of the third-party package: %v\n%s", err, out)
	}
}

// The core's installed size (issue 14.6: under 40 MB).
func TestCoreInstalledSize(t *testing.T) {
	dir := distDir(t)
	kib, err := strconv.Atoi(strings.TrimSpace(run(t, "dpkg-deb", "-f", find(t, dir, "guest-agent", "deb"), "Installed-Size")))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest-agent installed: %d KiB (%.1f MB)", kib, float64(kib)*1024/1e6)
	if float64(kib)*1024 > 40e6 {
		t.Errorf("the core installs %.1f MB, over the 40 MB of issue 14.6", float64(kib)*1024/1e6)
	}
}

func TestMain(m *testing.M) {
	// The tools' output is parsed: in the C locale whatever the
	// environment's.
	os.Setenv("LC_ALL", "C")
	code := m.Run()
	if extracted != "" {
		os.RemoveAll(extracted)
	}
	os.Exit(code)
}
