package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/guest-agent/guest-agent/shared/xenstore"
	"github.com/guest-agent/guest-agent/shared/xenstore/xenstoretest"
	"github.com/hashicorp/go-hclog"
)

// Fuzz targets for the exchange's request handling: the watch events and
// keys a host (or a broken xenstored) produces, the answers it writes back,
// the channel's options.

// FuzzRequestName: whatever path a watch event carries, requestName never
// panics, names at most one path component (never one with a "/"), and
// only for a path that lies below the request directory, relative or
// absolute; an event for the directory itself asks for a rescan.
func FuzzRequestName(f *testing.F) {
	for _, c := range [][2]string{
		{"data/host", "data/host"},
		{"data/host", "data/host/abc"},
		{"data/host", "data/host/abc/sub"},
		{"data/host", "/local/domain/3/data/host/abc"},
		{"data/host", "/local/domain/3/data/host"},
		{"data/host", "data/hostile"},
		{"data/host", "/x/data/host/"},
		{"/local/domain/3/data/host", "/local/domain/3/data/host/x"},
		{"/local/domain/3/data/host", "/a/local/domain/3/data/host/"},
		{"/local/domain/3/data/host", "/a/local/domain/3/data/host/xyz"},
		{"/", "/x"},
		{"", ""},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, reqDir, path string) {
		name, whole := requestName(reqDir, path)
		switch {
		case whole && name != "":
			t.Fatalf("requestName(%q, %q) = %q and the whole directory", reqDir, path, name)
		case strings.Contains(name, "/"):
			t.Fatalf("requestName(%q, %q) = %q, more than one component", reqDir, path, name)
		case name != "" && !strings.Contains(path, strings.TrimPrefix(reqDir, "/")+"/"+name):
			t.Fatalf("requestName(%q, %q) = %q, not below the request directory", reqDir, path, name)
		case path == reqDir && !whole:
			t.Fatalf("requestName(%q, %q): the directory itself must ask for a rescan", reqDir, path)
		}
		// Exact for the paths xenstored sends: the request directory, as
		// watched or made absolute, then the id.
		if reqDir == "" || strings.Contains(reqDir, "//") || strings.HasSuffix(reqDir, "/") || strings.Contains(name, "\x00") {
			return
		}
		id, _, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
		if id == "" {
			return
		}
		const home = "/local/domain/7"
		dir := "/" + strings.TrimPrefix(reqDir, "/")
		for _, p := range []string{reqDir + "/" + id, home + dir + "/" + id + "/sub"} {
			if strings.HasPrefix(reqDir, "/") && !strings.HasPrefix(p, reqDir) {
				continue
			}
			if p != reqDir+"/"+id && strings.Index(p, dir+"/") != len(home) {
				continue // the directory's name occurs in the home too: ambiguous
			}
			if got, whole := requestName(reqDir, p); got != id || whole {
				t.Fatalf("requestName(%q, %q) = %q, %v; want %q", reqDir, p, got, whole, id)
			}
		}
	})
}

// FuzzFitValue: an answer always fits in one XenStore message with its
// path; one that does not is replaced by a nova error saying so, still
// valid JSON.
func FuzzFitValue(f *testing.F) {
	f.Add("/local/domain/7/data/guest/6f1b0f9e", 0, []byte(`{"returncode":"0","message":"agent"}`), 0)
	f.Add("data/guest/1", 0, []byte("x"), 5000)
	f.Add("p", 4094, []byte(nil), 0)
	f.Add("p", 5000, []byte("v"), 0)
	f.Fuzz(func(t *testing.T, path string, pathPad int, value []byte, pad int) {
		if pathPad > 0 {
			path += strings.Repeat("p", pathPad%(2*xenstore.PayloadMax))
		}
		if pad > 0 {
			value = append(value, make([]byte, pad%(2*xenstore.PayloadMax))...)
		}
		got := fitValue(path, value)
		if len(path)+1+len(value) <= xenstore.PayloadMax {
			if string(got) != string(value) {
				t.Fatalf("a value that fits was changed to %q", got)
			}
			return
		}
		var r struct{ Returncode, Message string }
		if err := json.Unmarshal(got, &r); err != nil || r.Returncode != "500" || r.Message == "" {
			t.Fatalf("oversized answer became %q (%v)", got, err)
		}
		if len(path)+1+len(got) > xenstore.PayloadMax && len(path) < xenstore.PayloadMax-200 {
			t.Fatalf("the error answer of %d bytes does not fit beside a path of %d", len(got), len(path))
		}
	})
}

// FuzzDecodeOptions: any channel options decode or fail, never panic; what
// decodes has two distinct non-empty paths without a trailing "/" and a
// domid that is a domain id.
func FuzzDecodeOptions(f *testing.F) {
	for _, s := range []string{
		``, `null`, `{}`,
		`{"domid":7,"request_path":"data/host","response_path":"data/guest"}`,
		`{"domid":"7","request_path":"/local/domain/7/data/host/","retry_path":true,"log_requests":true}`,
		`{"domid":"x"}`, `{"domid":65536}`, `{"domid":-1}`, `{"domid":1e3}`, `{"domid":[1]}`,
		`{"request_path":""}`, `{"request_path":"/"}`, `{"request_path":"a","response_path":"a/"}`,
		`{"unknown":1}`, `[]`, `"x"`, `{"retry_path":"yes"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		ch := sdk.Channel{Name: "nova", Method: methodXenstore, Options: json.RawMessage(raw), Logger: hclog.NewNullLogger()}
		o, err := decodeOptions(ch)
		if err != nil {
			return
		}
		switch {
		case o.RequestPath == "" || o.ResponsePath == "":
			t.Fatalf("%s: empty path accepted: %+v", raw, o)
		case o.RequestPath == o.ResponsePath:
			t.Fatalf("%s: request and response path both %q", raw, o.RequestPath)
		case strings.HasSuffix(o.RequestPath, "/") || strings.HasSuffix(o.ResponsePath, "/"):
			t.Fatalf("%s: path with a trailing slash: %+v", raw, o)
		}
	})
}

// FuzzServeRequests: requests a host writes under data/host — any ids a
// XenStore node can have, any values — are each handed to the parser once
// and answered once under data/guest (or, when the answer does not fit, by
// a nova error), and their keys removed; an empty key is left for its
// value, and nothing else is written.
func FuzzServeRequests(f *testing.F) {
	for _, s := range []string{
		"6f1b0f9e-0000-4000-8000-000000000001\x00{\"name\":\"version\",\"value\":\"agent\"}\x00",
		"a\x00x\x00b\x00y\x00c\x00z\x00",
		"dup\x00first\x00dup\x00second\x00",
		"big\x00big: a reply that does not fit\x00",
		"empty\x00\x00later\x00{}\x00",
		"bad id!\x00v\x00ok_id@1\x00\xff\xfe\x00",
		"nested/key\x00v\x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, script []byte) {
		parts := xenstore.SplitStrings(script)
		type req struct{ id, value string }
		var reqs []req
		seen := map[string]bool{}
		for i := 0; i+1 < len(parts) && len(reqs) < 16; i += 2 {
			id, value := parts[i], parts[i+1]
			if seen[id] || id == "" || strings.Contains(id, "/") || len(value) > 2048 {
				continue
			}
			seen[id] = true
			reqs = append(reqs, req{id, value})
		}
		srv := xenstoretest.NewServer(t, xenstoretest.WithDomID(domid))
		fx := open(t, srv, newExchange(), "", false)
		waitFor(t, func() bool { return srv.Watches() == 1 })
		var written []req
		for _, r := range reqs {
			if err := srv.Write(hostD+"/"+r.id, []byte(r.value)); err != nil {
				continue // not a name a XenStore node can have
			}
			written = append(written, r)
		}
		dispatched := 0
		for _, r := range written {
			if r.value == "" {
				continue
			}
			dispatched++
			waitAnswered(t, srv, r.id, r.value)
		}
		time.Sleep(20 * time.Millisecond) // no second answer, nothing more dispatched
		if n := fx.parser.total(); n != dispatched {
			t.Fatalf("%d requests, %d dispatches", dispatched, n)
		}
		answers, _ := srv.Directory(gstD)
		if len(answers) != dispatched {
			t.Fatalf("%d answers %q for %d requests", len(answers), answers, dispatched)
		}
		for _, r := range written {
			if r.value != "" {
				continue
			}
			if _, ok := srv.Read(hostD + "/" + r.id); !ok {
				t.Fatalf("empty request %q removed", r.id)
			}
		}
	})
}

// waitAnswered waits for the answer to request id: the fake parser's echo
// of value, or the error that replaces an answer too large for XenStore.
func waitAnswered(t *testing.T, srv *xenstoretest.Server, id, value string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if v, ok := srv.Read(gstD + "/" + id); ok {
			var r struct{ Returncode, Message string }
			if err := json.Unmarshal(v, &r); err != nil {
				t.Fatalf("answer %q = %q: %v", id, v, err)
			}
			var want string // JSON's view of the bytes: U+FFFD for each one not UTF-8
			b, _ := json.Marshal(value)
			_ = json.Unmarshal(b, &want)
			if !(r.Returncode == "0" && r.Message == want) && !(r.Returncode == "500" && strings.Contains(r.Message, "does not fit")) {
				t.Fatalf("answer %q = %q, want the echo of %q", id, v, value)
			}
			if _, still := srv.Read(hostD + "/" + id); still {
				t.Fatalf("request %q still present after its answer", id)
			}
			return
		}
		if time.Now().After(deadline) {
			names, _ := srv.Directory(hostD)
			t.Fatalf("no answer for %q within 5s; pending requests %q", id, names)
		}
		time.Sleep(time.Millisecond)
	}
}
