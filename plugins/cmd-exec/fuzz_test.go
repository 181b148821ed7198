package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/hashicorp/go-hclog"
)

// Fuzz targets for guest-exec's argument decoding: path, arg, env,
// input-data and capture-output as a host may write them, with and without
// confinement. No process is started: max_concurrent is 0, so a request
// that passes every check is refused just before the fork.

const refusedAtFork = "guest-exec refused: 0 commands are already running (max_concurrent is 0)"

// execErrorTexts are the answers a guest-exec may get before the fork.
var execErrorTexts = regexp.MustCompile(`(?s)^(` +
	`Parameter '.*' is (unexpected|missing)` +
	`|Invalid parameter type for '(path|arg|env|input-data|arg\[\d+\]|env\[\d+\])', expected: (string|array)` +
	// guest-exec's arguments beyond qemu-ga's (extras.go).
	`|Invalid parameter type for '(timeout|cwd|user|group|input-pipe)', expected: (number|string|boolean)` +
	`|Parameter 'timeout' must be a number of seconds above 0 and at most \d+` +
	`|Parameter 'cwd' must be an absolute path` +
	`|guest-exec: working directory '.*'( is not a directory|: .*)` +
	`|guest-exec: no (user|group) '.*' in the guest` +
	`|Parameter '(user|group)' must not be empty` +
	`|Invalid parameter type for 'capture-output', expected: GuestExecCaptureOutput` +
	`|Parameter 'capture-output' does not accept value '.*'` +
	`|QMP input member 'arguments' must be an object` +
	`|Base64 data contains (embedded NUL characters|invalid characters)` +
	`|Failed to execute child process “.*” \(.*\)` +
	`|guest-exec of '.*' refused: .*` +
	`|` + regexp.QuoteMeta(refusedAtFork) + `)$`)

// glibUnsecvars are variables glibc drops for set-user-ID programs (its
// unsecvars.h): a confined guest-exec must never pass them.
var glibUnsecvars = []string{"GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN",
	"LOCPATH", "MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR"}

// FuzzExecArgs: any arguments object gets an error in qemu-ga's words or
// passes every check (and stops at max_concurrent); never a panic. What
// passes is what the schema allows: path a string, arg and env lists of
// strings, input-data base64 as qemu-ga accepts it, capture-output a
// boolean or a mode, nothing else. Confined (allowed_paths), nothing that
// passes carries a variable glibc would drop for a set-user-ID program, a
// loader variable (LD_*), or a locale or time zone that names a file.
func FuzzExecArgs(f *testing.F) {
	for _, s := range []string{
		`{"path":"/bin/true"}`,
		`{"path":"/bin/true","arg":["-a","b c"],"env":["PATH=/usr/bin","LANG=C.UTF-8"],"input-data":"QUJD\nRA==","capture-output":true}`,
		`{"path":"/bin/true","capture-output":"merged"}`,
		`{"path":"/bin/true","capture-output":"everything"}`,
		`{"path":"/bin/true","capture-output":null,"arg":null,"env":null,"input-data":null}`,
		`{"path":"true"}`,
		`{"path":""}`,
		`{"path":"/nonexistent/x"}`,
		`{"path":"/bin/../bin/true"}`,
		`{"path":1}`,
		`{"path":"/bin/true","arg":"x"}`,
		`{"path":"/bin/true","arg":[1]}`,
		`{"path":"/bin/true","arg":[null]}`,
		`{"path":"/bin/true","env":["LD_PRELOAD=/tmp/x.so"]}`,
		`{"path":"/bin/true","env":["GCONV_PATH=/tmp"]}`,
		`{"path":"/bin/true","env":["LANG=../../tmp/x"]}`,
		`{"path":"/bin/true","env":["TZ=/etc/shadow"]}`,
		`{"path":"/bin/true","env":["NOEQUALS"]}`,
		`{"path":"/bin/true","env":["=x"]}`,
		`{"path":"/bin/true","input-data":"QUJD*"}`,
		`{"path":"/bin/true","input-data":"QUJDRA"}`,
		`{"path":"/bin/true","input-data":"QQ==QQ=="}`,
		`{"path":"/bin/true","input-data":"QU\u0000JD"}`,
		`{"path":"/bin/true","input-data":5}`,
		`{"path":"/bin/true","extra":1}`,
		`{"path":"/bin/true","timeout":1.5,"cwd":"/tmp","user":"root","group":"0","input-pipe":true}`,
		`{"path":"/bin/true","timeout":0}`,
		`{"path":"/bin/true","timeout":"5"}`,
		`{"path":"/bin/true","timeout":1e300}`,
		`{"path":"/bin/true","cwd":"tmp"}`,
		`{"path":"/bin/true","cwd":"/nonexistent"}`,
		`{"path":"/bin/true","cwd":"/etc/passwd"}`,
		`{"path":"/bin/true","user":"no-such-user-fuzz"}`,
		`{"path":"/bin/true","user":""}`,
		`{"path":"/bin/true","group":7}`,
		`{"path":"/bin/true","input-pipe":"yes"}`,
		`{}`, `[]`, `null`, ``,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	open := newFuzzExecer(f, `{}`)
	confined := newFuzzExecer(f, `{"allowed_paths":["/bin/true","/usr/bin/true"]}`)
	f.Fuzz(func(t *testing.T, args []byte, isConfined bool) {
		e := open
		if isConfined {
			e = confined
		}
		_, err := e.handleExec(context.Background(), &sdk.Call{Command: "guest-exec", Args: args})
		if err == nil {
			t.Fatalf("%s: a process was started", args)
		}
		se, ok := err.(*sdk.Error)
		if !ok || se.Class != sdk.ClassGenericError || !execErrorTexts.MatchString(se.Desc) {
			t.Fatalf("%s: %T %v is not one of qemu-ga's answers", args, err, err)
		}
		if se.Desc != refusedAtFork {
			return
		}
		a, why := schemaExecArgs(args)
		if why != "" {
			t.Fatalf("%s passed every check, but %s", args, why)
		}
		if !isConfined {
			return
		}
		for i, kv := range a.Env {
			name, value, _ := strings.Cut(kv, "=")
			risky := strings.HasPrefix(name, "LD_") || strings.HasPrefix(name, "MALLOC_")
			for _, u := range glibUnsecvars {
				risky = risky || name == u
			}
			if risky {
				t.Fatalf("%s: confined, env[%d] %q passed", args, i, kv)
			}
			if (name == "LANG" || name == "LANGUAGE" || strings.HasPrefix(name, "LC_")) && strings.Contains(value, "/") {
				t.Fatalf("%s: confined, env[%d] %q names a file", args, i, kv)
			}
		}
	})
}

func newFuzzExecer(t testing.TB, opts string) *execer {
	o, err := decodeOptions(json.RawMessage(opts))
	if err != nil {
		t.Fatal(err)
	}
	o.MaxConcurrent = 0 // every request stops before the fork
	return newExecer(hclog.NewNullLogger(), o)
}

type schemaArgs struct {
	Path          string
	Arg, Env      []string
	InputData     *string
	CaptureOutput any
}

// schemaExecArgs decodes guest-exec's arguments by qga/qapi-schema.json's
// GuestExec, independently of the plugin, and says what breaks it.
func schemaExecArgs(raw []byte) (schemaArgs, string) {
	var a schemaArgs
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return a, "the arguments are not an object"
	}
	isNull := func(v json.RawMessage) bool { return v == nil || string(v) == "null" }
	for k, v := range m {
		var err error
		switch k {
		case "path":
			err = json.Unmarshal(v, &a.Path)
			if string(v) == "null" {
				return a, "path is null"
			}
		case "arg", "env":
			if isNull(v) {
				continue
			}
			var list []*string
			if err = json.Unmarshal(v, &list); err == nil {
				for _, s := range list {
					if s == nil {
						return a, k + " holds null"
					}
					if k == "arg" {
						a.Arg = append(a.Arg, *s)
					} else {
						a.Env = append(a.Env, *s)
					}
				}
			}
		case "input-data":
			if isNull(v) {
				continue
			}
			a.InputData = new(string)
			if err = json.Unmarshal(v, a.InputData); err == nil && strings.Trim(*a.InputData, base64Chars) != "" {
				return a, "input-data holds characters qemu-ga refuses"
			}
		case "capture-output":
			if isNull(v) {
				continue
			}
			if err = json.Unmarshal(v, &a.CaptureOutput); err == nil {
				switch c := a.CaptureOutput.(type) {
				case bool:
				case string:
					if _, ok := captureModes[c]; !ok {
						return a, "capture-output is no mode"
					}
				default:
					return a, "capture-output is neither a boolean nor a mode"
				}
			}
		case "timeout":
			if isNull(v) {
				continue
			}
			var secs float64
			if err = json.Unmarshal(v, &secs); err == nil && !(secs > 0 && secs <= maxExecTimeout.Seconds()) {
				return a, "timeout is out of range"
			}
		case "cwd":
			if isNull(v) {
				continue
			}
			var dir string
			if err = json.Unmarshal(v, &dir); err == nil {
				if st, serr := os.Stat(dir); !filepath.IsAbs(dir) || serr != nil || !st.IsDir() {
					return a, "cwd is not an existing absolute directory"
				}
			}
		case "user", "group":
			if isNull(v) {
				continue
			}
			var name string
			if err = json.Unmarshal(v, &name); err == nil && name == "" {
				return a, k + " is empty"
			}
		case "input-pipe":
			if isNull(v) {
				continue
			}
			var b bool
			err = json.Unmarshal(v, &b)
		default:
			return a, "member " + k + " is not in the schema"
		}
		if err != nil {
			return a, k + " has the wrong type: " + err.Error()
		}
	}
	if _, ok := m["path"]; !ok {
		return a, "path is missing"
	}
	return a, ""
}

const base64Chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n"

// glibBase64Decode is g_base64_decode (glib 2.74, which qemu-ga's
// qbase64_decode calls after checking the characters): '=' counts as a
// zero sextet that drops the bytes it pads, and an incomplete last group
// of two or three characters gives nothing.
func glibBase64Decode(s string) []byte {
	var out []byte
	var v uint32
	i := 0
	var last [2]byte
	for k := 0; k < len(s); k++ {
		c := s[k]
		var rank int
		switch {
		case c >= 'A' && c <= 'Z':
			rank = int(c - 'A')
		case c >= 'a' && c <= 'z':
			rank = int(c-'a') + 26
		case c >= '0' && c <= '9':
			rank = int(c-'0') + 52
		case c == '+':
			rank = 62
		case c == '/':
			rank = 63
		case c == '=':
			rank = 0
		default:
			continue
		}
		last[1], last[0] = last[0], c
		v = v<<6 | uint32(rank)
		i++
		if i == 4 {
			out = append(out, byte(v>>16))
			if last[1] != '=' {
				out = append(out, byte(v>>8))
			}
			if last[0] != '=' {
				out = append(out, byte(v))
			}
			i = 0
		}
	}
	return out
}

// FuzzInputData: input-data decodes as qemu-ga decodes it wherever the two
// are meant to agree: base64 as encoders write it (padded, or wrapped in
// lines), which also round-trips any bytes; characters qemu-ga refuses are
// refused with its texts. (Unpadded tails and '=' inside the text decode
// differently on purpose or not: see the report of issue 9's fuzzing.)
func FuzzInputData(f *testing.F) {
	for _, s := range []string{"", "QUJD", "QUJDRA==", "QUJDREU=", "QUJD\nRA==", "QUJD\nREVG\n", "QUJD*", "QU\x00JD", "QUJDRA", "Q", "===="} {
		f.Add(s, []byte("payload"), uint8(0))
	}
	f.Add("", []byte{0, 0xff, 0x10}, uint8(4))
	f.Fuzz(func(t *testing.T, text string, data []byte, wrap uint8) {
		got, err := qemuBase64Decode(text)
		switch {
		case strings.IndexByte(text, 0) >= 0:
			if err == nil || err.Error() != "Base64 data contains embedded NUL characters" {
				t.Fatalf("%q: %q, %v; want the NUL error", text, got, err)
			}
		case strings.Trim(text, base64Chars) != "":
			if err == nil || err.Error() != "Base64 data contains invalid characters" {
				t.Fatalf("%q: %q, %v; want the invalid characters error", text, got, err)
			}
		case err != nil:
			t.Fatalf("%q: %v, but qemu-ga accepts it", text, err)
		case canonicalBase64(text) && !bytes.Equal(got, glibBase64Decode(text)):
			t.Fatalf("%q: %q, qemu-ga decodes %q", text, got, glibBase64Decode(text))
		}
		// Whatever bytes, encoded padded and wrapped every 4*wrap
		// characters, come back.
		enc := base64.StdEncoding.EncodeToString(data)
		if wrap > 0 {
			var b strings.Builder
			for i := 0; i < len(enc); i += 4 * int(wrap) {
				b.WriteString(enc[i:min(len(enc), i+4*int(wrap))])
				b.WriteByte('\n')
			}
			enc = b.String()
		}
		back, err := qemuBase64Decode(enc)
		if err != nil || !bytes.Equal(back, data) || !bytes.Equal(glibBase64Decode(enc), data) {
			t.Fatalf("%q encoded as %q decodes to %q (%v)", data, enc, back, err)
		}
	})
}

// canonicalBase64 reports base64 as an encoder writes it: groups of four,
// '=' only as padding at the very end (line breaks anywhere).
func canonicalBase64(s string) bool {
	c := strings.ReplaceAll(s, "\n", "")
	if len(c)%4 != 0 {
		return false
	}
	body := strings.TrimRight(c, "=")
	return len(c)-len(body) <= 2 && !strings.Contains(body, "=")
}

// FuzzCaptureOutput: the GuestExecCaptureOutput alternate takes a boolean
// or a mode's name and nothing else, with qemu-ga's texts.
func FuzzCaptureOutput(f *testing.F) {
	for _, s := range []string{`true`, `false`, `"none"`, `"stdout"`, `"stderr"`, `"separated"`, `"merged"`, `"all"`, `1`, `null`, `[]`, `"\u006eone"`, ` true `, `"true"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if string(bytes.TrimSpace(raw)) == "null" {
			return // an absent member: decoding never asks the alternate
		}
		var c captureOutput
		err := c.UnmarshalJSON(raw)
		var v any
		jsonErr := json.Unmarshal(raw, &v)
		switch x := v.(type) {
		case bool:
			if err != nil || (x && c.mode != captureSeparated) || (!x && c.mode != captureNone) {
				t.Fatalf("%s: mode %d, %v", raw, c.mode, err)
			}
		case string:
			m, ok := captureModes[x]
			if ok != (err == nil) || (ok && c.mode != m) {
				t.Fatalf("%s: mode %d, %v", raw, c.mode, err)
			}
		default:
			if err == nil && jsonErr == nil {
				t.Fatalf("%s accepted as mode %d", raw, c.mode)
			}
		}
		if err != nil {
			if se, ok := err.(*sdk.Error); !ok || se.Class != sdk.ClassGenericError {
				t.Fatalf("%s: %T %v", raw, err, err)
			}
		}
	})
}

// streamErrorTexts are the answers of guest-exec-read, -write and
// -terminate for a pid that is not one of the plugin's.
var streamErrorTexts = regexp.MustCompile(`(?s)^(` +
	`Parameter '.*' is (unexpected|missing)` +
	`|Invalid parameter type for '.*', expected: .*` +
	`|QMP input member 'arguments' must be an object` +
	`|Parameter 'signal' (does not accept value '.*'|must be a signal number from 1 to 64)` +
	`|Parameter 'max-bytes' must be at least 1` +
	`|Parameter 'wait' must be a number of seconds, 0 or more` +
	`|Parameter 'out-offset' and 'err-offset' must not be negative` +
	`|Base64 data contains (embedded NUL characters|invalid characters)` +
	`|Invalid parameter 'pid')$`)

// FuzzStreamArgs: any arguments to guest-exec-read, -write and -terminate
// get an error in the same words, never a panic, and never signal or
// touch a process that is not one of the plugin's (pid 1 included).
func FuzzStreamArgs(f *testing.F) {
	for _, s := range []string{
		`{"pid":1}`, `{"pid":1,"signal":"KILL"}`, `{"pid":1,"signal":9}`, `{"pid":-1,"signal":"TERM"}`,
		`{"pid":0,"signal":0}`, `{"pid":1,"signal":"NOPE"}`, `{"pid":1,"signal":1.5}`,
		`{"pid":1,"out-offset":5,"err-offset":0,"max-bytes":10,"wait":0.1}`, `{"pid":1,"max-bytes":0}`,
		`{"pid":1,"wait":-1}`, `{"pid":1,"out-offset":-1}`, `{"pid":1,"input-data":"QUJD","close":true}`,
		`{"pid":1,"input-data":"*"}`, `{"pid":"1"}`, `{}`, `[]`, `null`, ``, `{"pid":1,"extra":2}`,
	} {
		for cmd := range uint8(3) {
			f.Add([]byte(s), cmd)
		}
	}
	e := newFuzzExecer(f, `{}`)
	handlers := []func(context.Context, *sdk.Call) (any, error){e.handleRead, e.handleWrite, e.handleTerminate}
	f.Fuzz(func(t *testing.T, args []byte, which uint8) {
		h := handlers[int(which)%len(handlers)]
		_, err := h(context.Background(), &sdk.Call{Args: args})
		if err == nil {
			t.Fatalf("%s: no error for a plugin without processes", args)
		}
		se, ok := err.(*sdk.Error)
		if !ok || se.Class != sdk.ClassGenericError || !streamErrorTexts.MatchString(se.Desc) {
			t.Fatalf("%s: %T %v", args, err, err)
		}
	})
}
