package negotiator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// The commands negotiator ships as scripts (find-disk-usage and the
// others, run through df, lsb_release and ip), served here natively: no
// helper program needs to be installed, and the output is the scripts'.

// BuiltinSources are where the built-in commands read the system; tests
// point them at files of their own.
type BuiltinSources struct {
	// MountInfo is /proc/self/mountinfo.
	MountInfo string
	// LSBRelease and OSRelease are read in this order for the distribution
	// (lsb_release prefers the first).
	LSBRelease string
	OSRelease  []string
}

// DefaultBuiltinSources reads the running system.
func DefaultBuiltinSources() BuiltinSources {
	return BuiltinSources{
		MountInfo:  "/proc/self/mountinfo",
		LSBRelease: "/etc/lsb-release",
		OSRelease:  []string{"/etc/os-release", "/usr/lib/os-release"},
	}
}

// Builtins returns negotiator's built-in commands.
func (s BuiltinSources) Builtins() map[string]Builtin {
	return map[string]Builtin{
		"find-disk-usage":            s.diskUsage,
		"find-distributor-id":        s.distribution("DISTRIB_ID"),
		"find-distribution-codename": s.distribution("DISTRIB_CODENAME"),
		"find-distribution-release":  s.distribution("DISTRIB_RELEASE"),
		"find-ip-addresses":          ipAddresses,
	}
}

// diskUsage prints "DEVICE MOUNTPOINT TOTAL USED" in bytes for each mounted
// block device, one line each, as find-disk-usage does from df -B 1: once
// per device, at its shortest mount point (df skips bind mounts).
func (s BuiltinSources) diskUsage(ctx context.Context, _ []string) (string, error) {
	f, err := os.Open(s.MountInfo)
	if err != nil {
		return "", fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	type mount struct{ device, dir string }
	var mounts []mount
	index := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+2 >= len(fields) {
			continue
		}
		dir, source := unescapeMount(fields[4]), unescapeMount(fields[sep+2])
		if !strings.HasPrefix(source, "/dev/") || !strings.HasPrefix(dir, "/") {
			continue
		}
		if i, ok := index[source]; ok {
			if len(dir) < len(mounts[i].dir) {
				mounts[i].dir = dir
			}
			continue
		}
		index[source] = len(mounts)
		mounts = append(mounts, mount{source, dir})
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mounts: %w", err)
	}
	var b strings.Builder
	for _, m := range mounts {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(m.dir, &st); err != nil {
			continue // gone or unreachable since listed, as df skips it
		}
		total := st.Blocks * uint64(st.Bsize)
		used := (st.Blocks - st.Bfree) * uint64(st.Bsize)
		fmt.Fprintf(&b, "%s %s %d %d\n", m.device, m.dir, total, used)
	}
	return b.String(), nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// distribution prints what lsb_release --short prints for key: from
// /etc/lsb-release when it has the key, else from os-release (DISTRIB_ID:
// the first word of NAME, as "Debian" of "Debian GNU/Linux"; DISTRIB_RELEASE:
// VERSION_ID; DISTRIB_CODENAME: VERSION_CODENAME). "n/a" when unknown, as
// lsb_release.
func (s BuiltinSources) distribution(key string) Builtin {
	return func(context.Context, []string) (string, error) {
		if v := readKeyValues(s.LSBRelease)[key]; v != "" {
			return v, nil
		}
		var osr map[string]string
		for _, p := range s.OSRelease {
			if osr = readKeyValues(p); osr != nil {
				break
			}
		}
		if osr == nil {
			return "", errors.New("neither lsb-release nor os-release is readable")
		}
		var v string
		switch key {
		case "DISTRIB_ID":
			if fields := strings.Fields(osr["NAME"]); len(fields) > 0 {
				v = fields[0]
			} else if id := osr["ID"]; id != "" {
				v = strings.ToUpper(id[:1]) + id[1:]
			}
		case "DISTRIB_RELEASE":
			v = osr["VERSION_ID"]
		case "DISTRIB_CODENAME":
			v = osr["VERSION_CODENAME"]
		}
		if v == "" {
			v = "n/a"
		}
		return v, nil
	}
}

// readKeyValues reads a shell-style KEY=value file (os-release(5)); nil
// when it cannot be read.
func readKeyValues(path string) map[string]string {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	kv := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			q := v[0]
			v = v[1 : len(v)-1]
			if q == '"' {
				v = strings.NewReplacer(`\"`, `"`, `\\`, `\`, "\\$", "$", "\\`", "`").Replace(v)
			}
		}
		kv[strings.TrimSpace(k)] = v
	}
	return kv
}

// ipAddresses prints every IPv4 address with its prefix length, one per
// line, in interface order, as find-ip-addresses does from ip addr.
func ipAddresses(context.Context, []string) (string, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("list interfaces: %w", err)
	}
	var b strings.Builder
	for _, ifc := range ifaces {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue // the interface went away meanwhile
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.To4() == nil {
				continue
			}
			ones, _ := ipn.Mask.Size()
			fmt.Fprintf(&b, "%s/%d\n", ipn.IP.To4(), ones)
		}
	}
	return b.String(), nil
}
