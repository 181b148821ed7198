package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/guest-agent/guest-agent/cmd/guestctl/internal/qga"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

const (
	// cpChunk is what one guest-file-read or -write carries; cpWindow how
	// many are in flight at once, so the link is never idle waiting for a
	// reply (the agent runs them in order).
	cpChunk  = 1 << 20
	cpWindow = 8
	// guestArgsMax bounds the paths given to one chmod, mkdir or sha256sum
	// run in the guest.
	guestArgsMax = 256
	guestPrefix  = "guest:"
)

type cpFlags struct {
	recursive bool
	progress  string // auto, always, never
}

func newCpCmd(o *options) *cobra.Command {
	f := &cpFlags{}
	cmd := &cobra.Command{
		Use:   "cp [-r] SRC DST",
		Short: "Copy files between the host and the guest (guest:/path), verified with SHA-256",
		Long: `cp copies a file, or with -r a directory, from the host into the guest or back;
the guest's side is written guest:/path (guestctl cp ./app.tar guest:/srv/,
guestctl cp -r guest:/var/log/app ./logs). As with cp, a DST that is an
existing directory (or ends in /) receives SRC under its own name.

Data moves with guest-file-open/-read/-write/-close, 1 MiB a request and 8
requests in flight, with guest-agent and qemu-ga alike. Every file's SHA-256
is computed in the guest (sha256sum) and compared with the bytes guestctl
sent or received; permission bits are kept both ways (chmod in the guest,
find -printf to read them). The guest needs coreutils and findutils (not
busybox). Symbolic links and special files are skipped with a warning.

A progress bar goes to stderr when it is a terminal (--progress=always or
never to choose).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCp(cmd, o, f, args[0], args[1])
		},
	}
	cmd.Flags().BoolVarP(&f.recursive, "recursive", "r", false, "copy directories")
	cmd.Flags().StringVar(&f.progress, "progress", "auto", "progress bar on stderr: auto (when a terminal), always, never")
	return cmd
}

// cpEntry is one file or directory of a copy, relative to its root.
type cpEntry struct {
	rel  string // "" for the root itself
	dir  bool
	mode fs.FileMode // permission bits
	size int64
	sum  string // hex SHA-256 of what was sent or received
}

// copier is one cp run.
type copier struct {
	o      *options
	a      *agent
	bar    *progressbar.ProgressBar // nil: no progress shown
	stderr io.Writer
}

func runCp(cmd *cobra.Command, o *options, f *cpFlags, src, dst string) error {
	if err := o.oneGuest("cp"); err != nil {
		return err
	}
	srcGuest, dstGuest := strings.HasPrefix(src, guestPrefix), strings.HasPrefix(dst, guestPrefix)
	if srcGuest == dstGuest {
		return errors.New("one of SRC and DST must be in the guest (guest:/path), the other on the host")
	}
	switch f.progress {
	case "auto", "always", "never":
	default:
		return fmt.Errorf("--progress %q: want auto, always or never", f.progress)
	}
	ctx := cmdContext(cmd)
	a, err := openAgent(ctx, o)
	if err != nil {
		return err
	}
	defer a.Close()
	c := &copier{o: o, a: a, stderr: cmd.ErrOrStderr()}
	show := f.progress == "always" || (f.progress == "auto" && isTerminal(cmd.ErrOrStderr()))
	if dstGuest {
		return c.upload(ctx, src, strings.TrimPrefix(dst, guestPrefix), f.recursive, show)
	}
	return c.download(ctx, strings.TrimPrefix(src, guestPrefix), dst, f.recursive, show)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (c *copier) startBar(total int64, what string, show bool) {
	if !show {
		return
	}
	c.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(c.stderr),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(c.stderr) }),
		progressbar.OptionUseANSICodes(true),
	)
	// The clock starts now, not at the first acknowledged megabyte.
	c.bar.StartWithoutRender()
}

func (c *copier) advance(n int) {
	if c.bar != nil {
		_ = c.bar.Add(n)
	}
}

func (c *copier) finishBar() {
	if c.bar != nil {
		_ = c.bar.Finish()
	}
}

// ---- host to guest

func (c *copier) upload(ctx context.Context, src, dst string, recursive, show bool) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if st.IsDir() && !recursive {
		return fmt.Errorf("%s is a directory: give -r", src)
	}
	if dst == "" {
		return errors.New("guest: needs a path")
	}
	// Into an existing directory, under SRC's name.
	target := dst
	if strings.HasSuffix(dst, "/") {
		target = path.Join(dst, filepath.Base(src))
	} else if _, err := c.a.guestRun(ctx, c.o, []string{"test", "-d", dst}); err == nil {
		target = path.Join(dst, filepath.Base(src))
	} else if !isGuestExit(err) {
		return err
	}
	entries, err := c.localEntries(src, st)
	if err != nil {
		return err
	}
	var total int64
	var dirs []string
	for _, e := range entries {
		total += e.size
		if e.dir {
			dirs = append(dirs, path.Join(target, e.rel))
		}
	}
	for _, batch := range batchArgs(dirs, guestArgsMax) {
		if _, err := c.a.guestRun(ctx, c.o, append([]string{"mkdir", "-p", "--"}, batch...)); err != nil {
			return err
		}
	}
	c.startBar(total, "upload", show)
	for i := range entries {
		if e := &entries[i]; !e.dir {
			if e.sum, err = c.uploadFile(ctx, filepath.Join(src, filepath.FromSlash(e.rel)), path.Join(target, e.rel)); err != nil {
				return err
			}
		}
	}
	c.finishBar()
	if err := c.guestChmod(ctx, target, entries); err != nil {
		return err
	}
	return c.verifyInGuest(ctx, target, entries)
}

// localEntries lists what an upload of src sends: src itself and, for a
// directory, everything under it (directories before their contents).
func (c *copier) localEntries(src string, st fs.FileInfo) ([]cpEntry, error) {
	if !st.IsDir() {
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%s is not a regular file", src)
		}
		return []cpEntry{{mode: st.Mode().Perm(), size: st.Size()}}, nil
	}
	var out []cpEntry
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "." {
			rel = ""
		}
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			out = append(out, cpEntry{rel: rel, dir: true, mode: info.Mode().Perm()})
		case info.Mode().IsRegular():
			out = append(out, cpEntry{rel: rel, mode: info.Mode().Perm(), size: info.Size()})
		default:
			fmt.Fprintf(c.stderr, "guestctl: skipping %s: not a regular file or directory\n", p)
		}
		return nil
	})
	return out, err
}

// uploadFile writes one local file into the guest with pipelined
// guest-file-write requests and returns the SHA-256 of what it sent.
func (c *copier) uploadFile(ctx context.Context, local, remote string) (string, error) {
	f, err := os.Open(local)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h, err := c.open(ctx, remote, "w")
	if err != nil {
		return "", err
	}
	sum := sha256.New()
	var inflight []writeInFlight
	wait := func() error {
		w := inflight[0]
		inflight = inflight[1:]
		ret, err := w.p.Wait(ctx)
		if err != nil {
			return fmt.Errorf("guest-file-write %s: %w", remote, err)
		}
		var r struct {
			Count int `json:"count"`
		}
		if err := jsonUnmarshal(ret, &r); err != nil || r.Count != w.n {
			return fmt.Errorf("guest-file-write %s: %d of %d bytes written (%s)", remote, r.Count, w.n, ret)
		}
		c.advance(w.n)
		return nil
	}
	buf := make([]byte, cpChunk)
	fail := func(err error) (string, error) {
		for range inflight {
			_ = wait()
		}
		c.closeHandle(ctx, h)
		return "", err
	}
	for {
		n, rerr := io.ReadFull(f, buf)
		if n > 0 {
			sum.Write(buf[:n])
			p, err := c.a.Start("guest-file-write", map[string]any{"handle": h, "buf-b64": base64.StdEncoding.EncodeToString(buf[:n])})
			if err != nil {
				return fail(err)
			}
			inflight = append(inflight, writeInFlight{p: p, n: n})
			if len(inflight) >= cpWindow {
				if err := wait(); err != nil {
					return fail(err)
				}
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return fail(rerr)
		}
	}
	for len(inflight) > 0 {
		if err := wait(); err != nil {
			return fail(err)
		}
	}
	if err := c.a.call(ctx, c.o, "guest-file-close", map[string]any{"handle": h}, nil); err != nil {
		return "", err
	}
	return hex.EncodeToString(sum.Sum(nil)), nil
}

type writeInFlight struct {
	p *qga.Pending
	n int
}

func (c *copier) open(ctx context.Context, remote, mode string) (int64, error) {
	var h int64
	if err := c.a.call(ctx, c.o, "guest-file-open", map[string]any{"path": remote, "mode": mode}, &h); err != nil {
		return 0, err
	}
	return h, nil
}

func (c *copier) closeHandle(ctx context.Context, h int64) {
	_ = c.a.call(ctx, c.o, "guest-file-close", map[string]any{"handle": h}, nil)
}

// guestChmod gives every entry its mode, one chmod per mode; directories
// last and deepest first, so a read-only one is changed after its
// contents.
func (c *copier) guestChmod(ctx context.Context, target string, entries []cpEntry) error {
	byMode := map[fs.FileMode][]string{}
	var modes []fs.FileMode
	sorted := append([]cpEntry(nil), entries...)
	sort.SliceStable(sorted, func(i, j int) bool {
		if sorted[i].dir != sorted[j].dir {
			return !sorted[i].dir
		}
		return strings.Count(sorted[i].rel, "/") > strings.Count(sorted[j].rel, "/")
	})
	for _, e := range sorted {
		if _, ok := byMode[e.mode]; !ok {
			modes = append(modes, e.mode)
		}
		byMode[e.mode] = append(byMode[e.mode], path.Join(target, e.rel))
	}
	for _, m := range modes {
		for _, batch := range batchArgs(byMode[m], guestArgsMax) {
			if _, err := c.a.guestRun(ctx, c.o, append([]string{"chmod", strconv.FormatUint(uint64(m), 8), "--"}, batch...)); err != nil {
				return err
			}
		}
	}
	return nil
}

// verifyInGuest compares the SHA-256 of every file as the guest reads it
// with the sum of what guestctl sent or received.
func (c *copier) verifyInGuest(ctx context.Context, target string, entries []cpEntry) error {
	var files []cpEntry
	for _, e := range entries {
		if !e.dir {
			files = append(files, e)
		}
	}
	for len(files) > 0 {
		n := min(len(files), guestArgsMax)
		batch := files[:n]
		files = files[n:]
		args := []string{"sha256sum", "-z", "--"}
		for _, e := range batch {
			args = append(args, path.Join(target, e.rel))
		}
		out, err := c.a.guestRun(ctx, c.o, args)
		if err != nil {
			return fmt.Errorf("SHA-256 check: %w", err)
		}
		lines := bytes.Split(bytes.TrimSuffix(out, []byte{0}), []byte{0})
		if len(lines) != len(batch) {
			return fmt.Errorf("SHA-256 check: sha256sum gave %d sums for %d files", len(lines), len(batch))
		}
		for i, e := range batch {
			got, _, _ := strings.Cut(string(lines[i]), " ")
			if got != e.sum {
				return fmt.Errorf("SHA-256 check: %s is %s in the guest, %s was sent or received", path.Join(target, e.rel), got, e.sum)
			}
		}
	}
	return nil
}

// ---- guest to host

func (c *copier) download(ctx context.Context, src, dst string, recursive, show bool) error {
	if src == "" {
		return errors.New("guest: needs a path")
	}
	entries, err := c.guestEntries(ctx, src, recursive)
	if err != nil {
		return err
	}
	target := dst
	if st, err := os.Stat(dst); (err == nil && st.IsDir()) || strings.HasSuffix(dst, "/") {
		target = filepath.Join(dst, path.Base(src))
	}
	var total int64
	for _, e := range entries {
		total += e.size
		if e.dir {
			if err := os.MkdirAll(filepath.Join(target, filepath.FromSlash(e.rel)), 0o700); err != nil {
				return err
			}
		}
	}
	c.startBar(total, "download", show)
	for i := range entries {
		if e := &entries[i]; !e.dir {
			if e.sum, err = c.downloadFile(ctx, path.Join(src, e.rel), filepath.Join(target, filepath.FromSlash(e.rel))); err != nil {
				return err
			}
		}
	}
	c.finishBar()
	if err := c.verifyInGuest(ctx, src, entries); err != nil {
		return err
	}
	// Modes last, directories deepest first, as in the guest.
	for i := len(entries) - 1; i >= 0; i-- {
		e := entries[i]
		if err := os.Chmod(filepath.Join(target, filepath.FromSlash(e.rel)), e.mode); err != nil {
			return err
		}
	}
	return nil
}

// guestEntries lists src in the guest with find -printf: type, mode, size
// and path, NUL-terminated.
func (c *copier) guestEntries(ctx context.Context, src string, recursive bool) ([]cpEntry, error) {
	args := []string{"find", src}
	if !recursive {
		args = append(args, "-maxdepth", "0")
	}
	out, err := c.a.guestRun(ctx, c.o, append(args, "-printf", `%y %m %s %P\0`))
	if err != nil {
		return nil, err
	}
	var entries []cpEntry
	for _, rec := range bytes.Split(bytes.TrimSuffix(out, []byte{0}), []byte{0}) {
		fields := strings.SplitN(string(rec), " ", 4)
		if len(fields) != 4 {
			return nil, fmt.Errorf("find in the guest printed %q", rec)
		}
		mode, err1 := strconv.ParseUint(fields[1], 8, 32)
		size, err2 := strconv.ParseInt(fields[2], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("find in the guest printed %q", rec)
		}
		e := cpEntry{rel: fields[3], mode: fs.FileMode(mode) & fs.ModePerm, size: size}
		switch fields[0] {
		case "d":
			if !recursive {
				return nil, fmt.Errorf("%s is a directory in the guest: give -r", src)
			}
			e.dir, e.size = true, 0
		case "f":
		default:
			fmt.Fprintf(c.stderr, "guestctl: skipping guest:%s: not a regular file or directory\n", path.Join(src, e.rel))
			continue
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// downloadFile reads one guest file with pipelined guest-file-read
// requests into local and returns the SHA-256 of what it received.
func (c *copier) downloadFile(ctx context.Context, remote, local string) (string, error) {
	h, err := c.open(ctx, remote, "r")
	if err != nil {
		return "", err
	}
	f, err := os.OpenFile(local, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		c.closeHandle(ctx, h)
		return "", err
	}
	defer f.Close()
	sum := sha256.New()
	err = c.readAll(ctx, h, remote, f, sum)
	c.closeHandle(ctx, h)
	if err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(sum.Sum(nil)), nil
}

func (c *copier) readAll(ctx context.Context, h int64, remote string, w io.Writer, sum hash.Hash) error {
	var inflight []*qga.Pending
	eof := false
	for !eof || len(inflight) > 0 {
		for !eof && len(inflight) < cpWindow {
			p, err := c.a.Start("guest-file-read", map[string]any{"handle": h, "count": cpChunk})
			if err != nil {
				return err
			}
			inflight = append(inflight, p)
		}
		p := inflight[0]
		inflight = inflight[1:]
		ret, err := p.Wait(ctx)
		if err != nil {
			for _, q := range inflight {
				_, _ = q.Wait(ctx)
			}
			return fmt.Errorf("guest-file-read %s: %w", remote, err)
		}
		r, err := decodeRead(ret)
		if err != nil {
			return fmt.Errorf("guest-file-read %s: %w", remote, err)
		}
		data := r.data
		if len(data) > 0 {
			if eof {
				return fmt.Errorf("guest-file-read %s: data after the end of the file", remote)
			}
			sum.Write(data)
			if _, err := w.Write(data); err != nil {
				return err
			}
			c.advance(len(data))
		}
		if r.EOF || r.Count == 0 {
			eof = true
		}
	}
	return nil
}

func isGuestExit(err error) bool {
	var e *guestExitError
	return errors.As(err, &e)
}

// fileRead is guest-file-read's result, its data decoded.
type fileRead struct {
	Count int  `json:"count"`
	EOF   bool `json:"eof"`
	data  []byte
}

// decodeRead decodes a guest-file-read result. The base64 is taken out
// and decoded straight from the reply (neither agent escapes anything in
// it), so a megabyte is not scanned and copied again by encoding/json.
func decodeRead(ret []byte) (fileRead, error) {
	var r fileRead
	key := []byte(`"buf-b64"`)
	i := bytes.Index(ret, key)
	if i < 0 {
		return r, fmt.Errorf("no buf-b64 in %.200s", ret)
	}
	start := i + len(key)
	for start < len(ret) && (ret[start] == ' ' || ret[start] == ':') {
		start++
	}
	if start >= len(ret) || ret[start] != '"' {
		return r, fmt.Errorf("buf-b64 is not a string in %.200s", ret)
	}
	n := bytes.IndexByte(ret[start+1:], '"')
	if n < 0 {
		return r, fmt.Errorf("unterminated buf-b64")
	}
	b64 := ret[start+1 : start+1+n]
	if bytes.IndexByte(b64, '\\') >= 0 {
		// Escaped: let encoding/json unquote it.
		var full struct {
			Buf string `json:"buf-b64"`
		}
		if err := json.Unmarshal(ret, &full); err != nil {
			return r, err
		}
		b64 = []byte(full.Buf)
	}
	rest := append(append(append([]byte(nil), ret[:start]...), `""`...), ret[start+2+n:]...)
	if err := json.Unmarshal(rest, &r); err != nil {
		return r, err
	}
	r.data = make([]byte, base64.StdEncoding.DecodedLen(len(b64)))
	m, err := base64.StdEncoding.Decode(r.data, b64)
	if err != nil {
		return r, fmt.Errorf("buf-b64: %w", err)
	}
	r.data = r.data[:m]
	if m != r.Count {
		return r, fmt.Errorf("%d bytes for a count of %d", m, r.Count)
	}
	return r, nil
}
