// Package journal fits the agent's hclog output to systemd's journal when
// the agent runs as a service: systemd connects stderr to the journal and
// says so in JOURNAL_STREAM. The journal stamps every line itself and reads
// a line's priority from an sd-daemon prefix ("<6>" for info), so under it
// the agent writes no timestamp of its own and prefixes every line with the
// priority of its record.
package journal

import (
	"bytes"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Connected reports whether f is the stream systemd connected to the
// journal: JOURNAL_STREAM holds "DEV:INODE" of that stream, and a stderr
// redirected elsewhere (a shell, a log file) keeps the variable but not the
// device and inode (sd_journal_stream_fd(3), systemd.exec(5)).
func Connected(f *os.File) bool {
	return matches(os.Getenv("JOURNAL_STREAM"), f)
}

func matches(env string, f *os.File) bool {
	devS, inoS, ok := strings.Cut(env, ":")
	if !ok {
		return false
	}
	dev, err1 := strconv.ParseUint(devS, 10, 64)
	ino, err2 := strconv.ParseUint(inoS, 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return uint64(st.Dev) == dev && st.Ino == ino
}

// Priority is the syslog priority the journal gives a record of level l:
// debug 7, info 6, warning 4, error 3 (trace is debug to the journal).
func Priority(l hclog.Level) int {
	switch l {
	case hclog.Trace, hclog.Debug:
		return 7
	case hclog.Warn:
		return 4
	case hclog.Error:
		return 3
	}
	return 6
}

// Writer is the Output of an hclog logger writing to the journal. hclog
// hands it each record whole, with the record's level (hclog.LevelWriter);
// the Writer strips the record's timestamp (set hclog's DisableTime too: then
// there is none to strip) and the "timestamp=" pair go-plugin adds to each
// line it forwards from a plugin, and writes every line of the record with
// the record's priority prefix, in one write.
//
// A plain Write (a writer that does not know the level) takes the level from
// hclog's "[LEVEL]" tag at the start of the record; untagged text is info.
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewWriter returns a Writer writing to w (the journal's stderr stream).
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

var _ hclog.LevelWriter = (*Writer)(nil)

// Write implements io.Writer: the level comes from hclog's "[LEVEL]" tag.
func (w *Writer) Write(p []byte) (int, error) {
	return w.LevelWrite(levelOf(p), p)
}

// LevelWrite implements hclog.LevelWriter.
func (w *Writer) LevelWrite(level hclog.Level, p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = Format(w.buf[:0], level, p)
	if _, err := w.w.Write(w.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// leadingTime is the timestamp hclog writes first on a line (hclog's
// TimeFormat and RFC 3339 variants, with a space after it).
var leadingTime = regexp.MustCompile(`^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)? `)

// forwardedTime is the pair go-plugin appends to every line it forwards from
// a plugin: the plugin's own time of the record (hclog's TimeFormat), the
// record's last pair (on a line of its own after a value of several lines).
var forwardedTime = regexp.MustCompile(` timestamp=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(?:Z|[+-]\d\d:?\d\d)$`)

// Format appends record p, logged at level, to dst as the journal reads it:
// each line with the priority prefix, no timestamps, a final newline.
func Format(dst []byte, level hclog.Level, p []byte) []byte {
	prefix := []byte("<" + strconv.Itoa(Priority(level)) + ">")
	p = leadingTime.ReplaceAll(bytes.TrimRight(p, "\n"), nil)
	if loc := forwardedTime.FindIndex(p); loc != nil {
		p = p[:loc[0]]
	}
	// hclog ends a value of several lines with a line of two spaces.
	p = bytes.TrimRight(p, " \n")
	for {
		line, rest, more := bytes.Cut(p, []byte("\n"))
		dst = append(dst, prefix...)
		dst = append(dst, line...)
		dst = append(dst, '\n')
		if !more {
			return dst
		}
		p = rest
	}
}

// levelOf reads hclog's "[LEVEL]" tag at the start of a record (after its
// timestamp, if any).
func levelOf(p []byte) hclog.Level {
	p = leadingTime.ReplaceAll(p, nil)
	if len(p) == 0 || p[0] != '[' {
		return hclog.Info
	}
	end := bytes.IndexByte(p, ']')
	if end < 0 {
		return hclog.Info
	}
	switch string(p[1:end]) {
	case "TRACE":
		return hclog.Trace
	case "DEBUG":
		return hclog.Debug
	case "WARN":
		return hclog.Warn
	case "ERROR":
		return hclog.Error
	}
	return hclog.Info
}
