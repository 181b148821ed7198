// Command packaging writes the nfpm configurations of guest-agent's packages
// (make package): one template per kind of package (templates/*.yaml.tmpl:
// the core, guestctl, a plugin, the meta-package) filled from the table
// below, and each package's maintainer scripts from one template per script
// (scripts/*.tmpl). It prints the package version it used.
//
//	go run . -describe "$(git describe --tags --match 'v[0-9]*' --always --dirty)" -commits N \
//	    -arch amd64 -bin ../bin -doc ../build/doc -out ../build/nfpm \
//	    -plugins "cmd-exec cmd-files ..."
package main

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"
)

//go:embed templates/*.tmpl scripts/*.tmpl
var templates embed.FS

// ABI is the plugin protocol version of the supervisor (sdk.ProtocolVersion):
// the core provides guest-agent-plugin-abi-ABI, plugin packages depend on it.
const ABI = 1

// Port is the host's agent port the udev rule starts the agent for.
const Port = "/dev/virtio-ports/org.qemu.guest_agent.0"

// Service is a systemd unit a package ships and manages.
type Service struct {
	Unit string
	// Udev: started by udev when the port appears (no [Install]).
	Udev bool
	// Enable: enabled at the first install (WantedBy=multi-user.target).
	Enable     bool
	StateDir   string
	RuntimeDir string
}

var (
	coreService = &Service{Unit: "guest-agent.service", Udev: true,
		StateDir: "/var/lib/guest-agent", RuntimeDir: "/run/guest-agent"}
	xenService = &Service{Unit: "guest-agent-xen.service", Enable: true,
		StateDir: "/var/lib/guest-agent-xen", RuntimeDir: "/run/guest-agent-xen"}
)

// Package is one package of the project.
type Package struct {
	Kind        string // core, guestctl, plugin, meta: templates/KIND.yaml.tmpl
	Name        string
	Section     string
	Description string // first line: the summary
	Plugins     []string
	Service     *Service
	Recommends  []string
	Suggests    []string
	Depends     []string // meta: every package of the build
	// DebReplaces: Replaces on deb only (rpm's would be Obsoletes).
	DebReplaces []string
	// DebScripts, RPMScripts: the maintainer scripts, by nfpm's name.
	DebScripts, RPMScripts map[string]scriptSpec
}

// scriptSpec is one maintainer script: its template.
type scriptSpec struct {
	template string
}

var (
	coreDeb = map[string]scriptSpec{
		"postinstall": {template: "deb-postinst"},
		"preremove":   {template: "deb-prerm"},
		"postremove":  {template: "deb-postrm"},
	}
	serviceRPM = map[string]scriptSpec{
		"postinstall": {template: "rpm-post"},
		"preremove":   {template: "rpm-preun"},
		"postremove":  {template: "rpm-postun"},
	}
	// A plugin package has no scripts: the running agents follow their
	// plugin directory (inotify) and take a plugin up, drop it or restart
	// it on its new binary by themselves, so installing one restarts no
	// agent (which would drop every session, and thaw a frozen guest).
	xenDeb = map[string]scriptSpec{
		"postinstall": {template: "deb-postinst"},
		"preremove":   {template: "deb-prerm"},
		"postremove":  {template: "deb-postrm"},
	}
	xenRPM = map[string]scriptSpec{
		"postinstall": {template: "rpm-post"},
		"preremove":   {template: "rpm-preun"},
		"postremove":  {template: "rpm-postun"},
	}
)

// usual are the plugin packages that make the agent a drop-in for qemu-ga.
var usual = []string{"guest-agent-plugin-files", "guest-agent-plugin-exec", "guest-agent-plugin-system", "guest-agent-plugin-network"}

var packages = []Package{
	{
		Kind: "core", Name: "guest-agent", Section: "admin", Plugins: []string{"parser-json", "exchange-virtio"},
		Service: coreService, Recommends: usual, DebReplaces: []string{"qemu-guest-agent"},
		Suggests: []string{"guest-agent-plugin-nova", "guest-agent-plugin-xenstore"},
		Description: "Guest agent for virtual machines, qemu-ga compatible, built of plugins\n" +
			"A drop-in for QEMU's qemu-ga (libvirt, Proxmox, OpenStack on KVM): the supervisor,\n" +
			"the qga/nova parser and the virtio-serial, serial, unix and vsock exchange,\n" +
			"started by udev when the host's org.qemu.guest_agent.0 port appears. It answers\n" +
			"guest-ping, guest-sync and guest-info; the commands come from the\n" +
			"guest-agent-plugin-* packages (each plugin its own process).",
		DebScripts: coreDeb, RPMScripts: serviceRPM,
	},
	{
		Kind: "guestctl", Name: "guestctl", Section: "admin",
		Description: "Host-side client of guest agents (guest-agent or qemu-ga)\n" +
			"Talks to the agent of a guest through the unix socket of its channel, like\n" +
			"virsh qemu-agent-command: ping, info, call NAME JSON, raw.",
	},
	plugin("files", "cmd-files", "file commands: guest-file-open/read/write/seek/flush/close"),
	plugin("exec", "cmd-exec", "process commands: guest-exec, guest-exec-status, negotiator's user-defined commands"),
	plugin("system", "cmd-system", "system commands: shutdown, fsfreeze, fstrim, time, users, vCPUs, memory, disks, filesystems, SSH keys, passwords"),
	plugin("network", "cmd-network", "network commands: guest-network-get-interfaces, guest-network-get-route"),
	plugin("nova", "cmd-nova", "OpenStack nova-agent commands: version, features, keyinit, password, injectfile, resetnetwork, agentupdate"),
	func() Package {
		p := plugin("xenstore", "exchange-xenstore", "XenStore exchange for Xen guests: the nova-agent protocol, as a service")
		p.Service, p.DebScripts, p.RPMScripts = xenService, xenDeb, xenRPM
		p.Description += "\nShips guest-agent-xen.service, enabled, which runs only on Xen guests\n" +
			"(guest-agent -m xenstore). Install guest-agent-plugin-nova for its commands."
		p.Recommends = []string{"guest-agent-plugin-nova"}
		return p
	}(),
	{
		Kind: "meta", Name: "guest-agent-full", Section: "admin",
		Depends: []string{"guest-agent", "guest-agent-plugin-files", "guest-agent-plugin-exec", "guest-agent-plugin-system",
			"guest-agent-plugin-network", "guest-agent-plugin-nova", "guest-agent-plugin-xenstore"},
		Description: "Guest agent with every in-tree plugin (metapackage)\n" +
			"Depends on guest-agent and every guest-agent-plugin-* package of the same build.",
	},
}

func plugin(short, bin, what string) Package {
	return Package{
		Kind: "plugin", Name: "guest-agent-plugin-" + short, Section: "admin", Plugins: []string{bin},
		Description: "Guest agent plugin: " + what + "\n" +
			"A plugin of guest-agent (plugin protocol " + fmt.Sprint(ABI) + "), in /usr/lib/guest-agent/plugins with its\n" +
			"manifest; running agents take it up, or drop it, without a restart.",
	}
}

// config is what a template sees.
type config struct {
	Package
	Version, Arch, Maintainer, Homepage, License string
	ABI                                          int
	Bin, Doc, Src                                string
	Scripts                                      struct{ Deb, RPM map[string]string }
}

// scriptData is what a script template sees.
type scriptData struct {
	Package, Script, Template string
	Service                   *Service
	Port                      string
}

type manPage struct{ Src, Dst string }

func main() {
	var o struct {
		describe, version, arch, bin, doc, src, out, plugins, maintainer, homepage, license string
		commits                                                                             int
	}
	flag.StringVar(&o.describe, "describe", "", "git describe --tags --always --dirty")
	flag.IntVar(&o.commits, "commits", 0, "git rev-list --count HEAD (versions without a tag)")
	flag.StringVar(&o.version, "version", "", "package version as is (instead of -describe)")
	flag.StringVar(&o.arch, "arch", "amd64", "GOARCH")
	flag.StringVar(&o.bin, "bin", "../bin", "binaries and manifests of make build")
	flag.StringVar(&o.doc, "doc", "../build/doc", "man pages and completions of make doc")
	flag.StringVar(&o.src, "src", ".", "this directory (units, udev rule, agent.hcl)")
	flag.StringVar(&o.out, "out", "../build/nfpm", "where the nfpm configurations and scripts go")
	flag.StringVar(&o.plugins, "plugins", "", "every in-tree plugin (make's PLUGINS): each must be packaged")
	flag.StringVar(&o.maintainer, "maintainer", "guest-agent developers <guest-agent@localhost>", "maintainer")
	flag.StringVar(&o.homepage, "homepage", "", "homepage")
	flag.StringVar(&o.license, "license", "", "license")
	flag.Parse()

	version := o.version
	if version == "" {
		var err error
		if version, err = PackageVersion(o.describe, o.commits); err != nil {
			fail(err)
		}
	}
	if err := checkPlugins(strings.Fields(o.plugins)); err != nil {
		fail(err)
	}
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			fail(err)
		}
		return a
	}
	base := config{Version: version, Arch: o.arch, Maintainer: o.maintainer, Homepage: o.homepage, License: o.license,
		ABI: ABI, Bin: abs(o.bin), Doc: abs(o.doc), Src: abs(o.src)}
	out := abs(o.out)
	if err := os.MkdirAll(out, 0o755); err != nil {
		fail(err)
	}
	tmpl := template.Must(template.New("").Funcs(template.FuncMap{
		"quote": func(s string) string { b, _ := json.Marshal(s); return string(b) },
		"join":  strings.Join,
		"pluginFiles": func(c config, plugin string) any {
			return struct{ Bin, Plugin string }{c.Bin, plugin}
		},
		"docFiles": func(c config, command string) (any, error) {
			pages, err := manPages(c.Doc, command)
			return struct {
				Doc, Command string
				ManPages     []manPage
			}{c.Doc, command, pages}, err
		},
	}).ParseFS(templates, "templates/*.tmpl", "scripts/*.tmpl"))

	for _, p := range packages {
		c := base
		c.Package = p
		var err error
		if c.Scripts.Deb, err = writeScripts(tmpl, out, p, "deb", p.DebScripts); err != nil {
			fail(err)
		}
		if c.Scripts.RPM, err = writeScripts(tmpl, out, p, "rpm", p.RPMScripts); err != nil {
			fail(err)
		}
		var buf bytes.Buffer
		if err := tmpl.ExecuteTemplate(&buf, p.Kind+".yaml.tmpl", c); err != nil {
			fail(fmt.Errorf("%s: %w", p.Name, err))
		}
		if err := checkSources(buf.String()); err != nil {
			fail(fmt.Errorf("%s: %w", p.Name, err))
		}
		if err := os.WriteFile(filepath.Join(out, p.Name+".yaml"), buf.Bytes(), 0o644); err != nil {
			fail(err)
		}
	}
	fmt.Println(version)
}

// checkPlugins refuses a build whose plugins/ holds a plugin no package
// ships (or a package naming a plugin that is not built).
func checkPlugins(built []string) error {
	if len(built) == 0 {
		return nil
	}
	packaged := map[string]bool{}
	for _, p := range packages {
		for _, pl := range p.Plugins {
			packaged[pl] = true
		}
	}
	var missing []string
	for _, b := range built {
		if !packaged[b] {
			missing = append(missing, b)
		}
		delete(packaged, b)
	}
	for p := range packaged {
		missing = append(missing, p+" (packaged, not built)")
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("plugins without a package: %s (add them to the table in packaging/main.go)", strings.Join(missing, ", "))
	}
	return nil
}

// manPages are the gzipped pages of command (and its subcommands) under
// doc/man, with where they are installed.
func manPages(doc, command string) ([]manPage, error) {
	var pages []manPage
	for _, pattern := range []string{command + ".*.gz", command + "-*.*.gz"} {
		matches, _ := filepath.Glob(filepath.Join(doc, "man", "man*", pattern))
		for _, m := range matches {
			section := filepath.Base(filepath.Dir(m))
			pages = append(pages, manPage{Src: m, Dst: "/usr/share/man/" + section + "/" + filepath.Base(m)})
		}
	}
	if command == "guest-agent" {
		matches, _ := filepath.Glob(filepath.Join(doc, "man", "man5", "agent.hcl.5.gz"))
		for _, m := range matches {
			pages = append(pages, manPage{Src: m, Dst: "/usr/share/man/man5/agent.hcl.5.gz"})
		}
	}
	if len(pages) == 0 {
		return nil, fmt.Errorf("no man pages of %s in %s: run make doc", command, doc)
	}
	sort.Slice(pages, func(i, j int) bool { return pages[i].Dst < pages[j].Dst })
	return pages, nil
}

// writeScripts renders a package's maintainer scripts for one packager and
// returns nfpm's name → path.
func writeScripts(tmpl *template.Template, out string, p Package, packager string, specs map[string]scriptSpec) (map[string]string, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	dir := filepath.Join(out, "scripts", p.Name, packager)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	paths := map[string]string{}
	for name, s := range specs {
		var buf bytes.Buffer
		data := scriptData{Package: p.Name, Script: name, Template: s.template + ".tmpl", Service: p.Service, Port: Port}
		if err := tmpl.ExecuteTemplate(&buf, s.template+".tmpl", data); err != nil {
			return nil, fmt.Errorf("%s %s %s: %w", p.Name, packager, name, err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, buf.Bytes(), 0o755); err != nil {
			return nil, err
		}
		paths[name] = path
	}
	return paths, nil
}

// checkSources fails early, naming the file, when a configuration refers to
// a source that is not there (nfpm's own message is less clear).
func checkSources(yaml string) error {
	var errs []error
	for _, line := range strings.Split(yaml, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "- src: ")
		if !ok {
			continue
		}
		var src string
		if err := json.Unmarshal([]byte(rest), &src); err != nil {
			return fmt.Errorf("src %s: %w", rest, err)
		}
		if _, err := os.Stat(src); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "packaging:", err)
	os.Exit(1)
}
