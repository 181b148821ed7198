package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

func (s *system) infoCommands() []sdk.Command {
	return []sdk.Command{
		{
			Name:        "guest-get-osinfo",
			Description: "Get the kernel (uname) and distribution (os-release) of the guest",
			ArgsSchema:  `{"type":"object","additionalProperties":false}`,
			Handler:     s.getOSInfo,
		},
		{
			Name:        "guest-get-host-name",
			Description: "Get the guest's host name",
			ArgsSchema:  `{"type":"object","additionalProperties":false}`,
			Handler:     s.getHostName,
		},
	}
}

// osReleaseFields maps GuestOSInfo members to os-release(5) keys.
var osReleaseFields = [...][2]string{
	{"id", "ID"},
	{"name", "NAME"},
	{"pretty-name", "PRETTY_NAME"},
	{"version", "VERSION"},
	{"version-id", "VERSION_ID"},
	{"variant", "VARIANT"},
	{"variant-id", "VARIANT_ID"},
}

func (s *system) getOSInfo(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	info := map[string]any{}
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		info["kernel-release"] = unix.ByteSliceToString(u.Release[:])
		info["kernel-version"] = unix.ByteSliceToString(u.Version[:])
		info["machine"] = unix.ByteSliceToString(u.Machine[:])
	}
	// QGA_OS_RELEASE is qemu-ga's own override, used by its tests.
	var rel map[string]string
	if p, ok := os.LookupEnv("QGA_OS_RELEASE"); ok {
		rel = s.parseOSRelease(p)
	} else if rel = s.parseOSRelease(s.rootPath("/etc/os-release")); rel == nil {
		rel = s.parseOSRelease(s.rootPath("/usr/lib/os-release"))
	}
	for _, f := range osReleaseFields {
		if v, ok := rel[f[1]]; ok {
			info[f[0]] = v
		}
	}
	return info, nil
}

// parseOSRelease reads an os-release file: KEY=value lines, values possibly
// quoted with shell escapes. nil when the file is missing or not UTF-8.
func (s *system) parseOSRelease(path string) map[string]string {
	data, err := s.readFileLimited(path)
	if err != nil {
		s.log.Debug("os-release not read", "path", path, "error", err)
		return nil
	}
	if !utf8.Valid(data) {
		s.log.Warn("os-release is not UTF-8 encoded", "path", path)
		return nil
	}
	out := map[string]string{}
	for _, line := range bytes.Split(data, []byte("\n")) {
		l := strings.TrimSpace(string(line))
		if l == "" || l[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		out[strings.TrimSpace(k)] = osReleaseValue(strings.TrimSpace(v))
	}
	return out
}

// osReleaseValue unquotes a value as qemu-ga's ga_osrelease_replace_special()
// means to: an unquoted value ends at the first space or semicolon; inside
// quotes, \$ \' \" \\ \` stand for the character and any other backslash is
// kept.
func osReleaseValue(v string) string {
	if v == "" || (v[0] != '"' && v[0] != '\'') {
		if i := strings.IndexByte(v, ' '); i >= 0 {
			v = v[:i]
		}
		if i := strings.IndexByte(v, ';'); i >= 0 {
			v = v[:i]
		}
		return v
	}
	quote := v[0]
	var b strings.Builder
	for i := 1; i < len(v); i++ {
		c := v[i]
		if c == '\\' && i+1 < len(v) && strings.IndexByte("$'\"\\`", v[i+1]) >= 0 {
			b.WriteByte(v[i+1])
			i++
			continue
		}
		if c == quote {
			break
		}
		b.WriteByte(c)
	}
	return b.String()
}

// getHostName asks the kernel each time (qemu-ga avoids glib's cached
// g_get_host_name() for the same reason) and says "localhost" when it cannot.
func (s *system) getHostName(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	name := "localhost"
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		name = unix.ByteSliceToString(u.Nodename[:])
	}
	return map[string]string{"host-name": name}, nil
}
