package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

const (
	// readCountDefault is qemu-ga's QGA_READ_COUNT_DEFAULT.
	readCountDefault = 4096
	// readCountMax is qemu-ga's GUEST_FILE_READ_COUNT_MAX: 48 MiB, so the
	// base64 reply stays within the 64 MiB a host's JSON parser accepts.
	readCountMax = 48 << 20
	// sizeCapThreshold: reads up to this count allocate count bytes; larger
	// reads of regular files allocate only what the file still holds (plus
	// readSlack), so asking 48 MiB of a small file costs little memory.
	sizeCapThreshold = 64 << 10
	readSlack        = 4096
	// newFileMode is qemu-ga's DEFAULT_NEW_FILE_MODE: set with fchmod after an
	// exclusive create, so it does not depend on the umask.
	newFileMode = 0o666
)

// openModes are the fopen modes qemu-ga accepts and their open(2) flags.
var openModes = map[string]int{
	"r": unix.O_RDONLY, "rb": unix.O_RDONLY,
	"w": unix.O_WRONLY | unix.O_CREAT | unix.O_TRUNC, "wb": unix.O_WRONLY | unix.O_CREAT | unix.O_TRUNC,
	"a": unix.O_WRONLY | unix.O_CREAT | unix.O_APPEND, "ab": unix.O_WRONLY | unix.O_CREAT | unix.O_APPEND,
	"r+": unix.O_RDWR, "rb+": unix.O_RDWR, "r+b": unix.O_RDWR,
	"w+": unix.O_RDWR | unix.O_CREAT | unix.O_TRUNC, "wb+": unix.O_RDWR | unix.O_CREAT | unix.O_TRUNC, "w+b": unix.O_RDWR | unix.O_CREAT | unix.O_TRUNC,
	"a+": unix.O_RDWR | unix.O_CREAT | unix.O_APPEND, "ab+": unix.O_RDWR | unix.O_CREAT | unix.O_APPEND, "a+b": unix.O_RDWR | unix.O_CREAT | unix.O_APPEND,
}

func (f *filesPlugin) commands() []sdk.Command {
	return []sdk.Command{
		{
			Name:        "guest-file-open",
			Description: "Open a file in the guest and return a handle (fopen modes r, w, a, r+, w+, a+, with optional b).",
			ArgsSchema:  `{"type":"object","properties":{"path":{"type":"string"},"mode":{"type":"string","default":"r"}},"required":["path"],"additionalProperties":false}`,
			Handler:     f.open,
		},
		{
			Name:        "guest-file-close",
			Description: "Close an open file in the guest.",
			ArgsSchema:  handleSchema,
			Handler:     f.close,
		},
		{
			Name:        "guest-file-read",
			Description: "Read from an open file in the guest; data is base64-encoded (count defaults to 4096, at most 48 MiB).",
			ArgsSchema:  `{"type":"object","properties":{"handle":{"type":"integer"},"count":{"type":"integer","minimum":0,"maximum":50331648,"default":4096}},"required":["handle"],"additionalProperties":false}`,
			BlobResult:  "buf-b64",
			ReadAhead:   true,
			Handler:     f.read,
		},
		{
			Name:        "guest-file-write",
			Description: "Write base64-encoded data to an open file in the guest.",
			ArgsSchema:  `{"type":"object","properties":{"handle":{"type":"integer"},"buf-b64":{"type":"string","contentEncoding":"base64"},"count":{"type":"integer","minimum":0}},"required":["handle","buf-b64"],"additionalProperties":false}`,
			BlobArg:     "buf-b64",
			Handler:     f.write,
		},
		{
			Name:        "guest-file-seek",
			Description: "Set the position of an open file in the guest (whence 0/1/2 or set/cur/end).",
			ArgsSchema:  `{"type":"object","properties":{"handle":{"type":"integer"},"offset":{"type":"integer"},"whence":{"oneOf":[{"type":"integer"},{"enum":["set","cur","end"]}]}},"required":["handle","offset","whence"],"additionalProperties":false}`,
			Handler:     f.seek,
		},
		{
			Name:        "guest-file-flush",
			Description: "Flush an open file in the guest (writes are unbuffered here, so this only checks the handle).",
			ArgsSchema:  handleSchema,
			Handler:     f.flush,
		},
	}
}

const handleSchema = `{"type":"object","properties":{"handle":{"type":"integer"}},"required":["handle"],"additionalProperties":false}`

type handleArgs struct {
	Handle int64 `json:"handle"`
}

type readResult struct {
	Count int  `json:"count"`
	EOF   bool `json:"eof"`
}

type writeResult struct {
	Count int  `json:"count"`
	EOF   bool `json:"eof"`
}

type seekResult struct {
	Position int64 `json:"position"`
	EOF      bool  `json:"eof"`
}

func (f *filesPlugin) open(_ context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Path string  `json:"path"`
		Mode *string `json:"mode"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	mode := "r"
	if a.Mode != nil {
		mode = *a.Mode
	}
	flags, ok := openModes[mode]
	if !ok {
		return nil, sdk.Errorf("invalid file open mode '%s'", mode)
	}
	// O_NONBLOCK as qemu-ga: a named pipe must not hang the command.
	flags |= unix.O_NOCTTY | unix.O_NONBLOCK | unix.O_CLOEXEC

	if !f.handles.reserve() {
		return nil, sdk.Errorf("failed to open file '%s' (mode: '%s'): too many open handles (max_handles is %d)", a.Path, mode, f.handles.max)
	}
	o := &opener{path: a.Path}
	if f.confine != nil {
		root, rel, err := f.confine.resolve(a.Path)
		if err != nil {
			f.handles.release()
			return nil, f.openError(a.Path, mode, err)
		}
		o.root, o.rel = root, rel
	}
	fd, err := openOrCreate(o, flags)
	if err != nil {
		f.handles.release()
		if errors.Is(err, errFchmod) {
			return nil, sdk.Errorf("failed to set permission 0%03o on new file '%s' (mode: '%s'): %s", newFileMode, a.Path, mode, strerror(errors.Unwrap(err)))
		}
		return nil, f.openError(a.Path, mode, err)
	}
	var st unix.Stat_t
	regular := unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG
	id, err := f.handles.add(fd, regular)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	f.p.Logger.Info("guest-file-open", "path", a.Path, "mode", mode, "handle", id)
	return id, nil
}

func (f *filesPlugin) openError(path, mode string, err error) error {
	if errors.Is(err, errOutside) {
		return sdk.Errorf("failed to open file '%s' (mode: '%s'): the path is outside the allowed paths (%s)", path, mode, f.confine)
	}
	return sdk.Errorf("failed to open file '%s' (mode: '%s'): %s", path, mode, strerror(err))
}

var errFchmod = errors.New("fchmod")

// openOrCreate opens as qemu-ga's safe_open_or_create: when the mode may
// create, first create exclusively with no permissions and fchmod to 0666
// (so the umask plays no part), else open the existing file, whose mode is
// left alone.
func openOrCreate(o *opener, flags int) (int, error) {
	if flags&unix.O_CREAT == 0 {
		return retryEINTR(func() (int, error) { return o.open(flags, 0) })
	}
	fd, err := retryEINTR(func() (int, error) { return o.open(flags|unix.O_EXCL, 0) })
	if err == unix.EEXIST {
		return retryEINTR(func() (int, error) { return o.open(flags&^unix.O_CREAT, 0) })
	}
	if err != nil {
		return -1, err
	}
	if err := unix.Fchmod(fd, newFileMode); err != nil {
		unix.Close(fd)
		o.unlink()
		return -1, errors.Join(errFchmod, err)
	}
	return fd, nil
}

func retryEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}

func (f *filesPlugin) close(ctx context.Context, call *sdk.Call) (any, error) {
	var a handleArgs
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	if err := f.handles.remove(ctx, a.Handle); err != nil {
		return nil, err
	}
	f.p.Logger.Debug("guest-file-close", "handle", a.Handle)
	return nil, nil
}

func (f *filesPlugin) flush(ctx context.Context, call *sdk.Call) (any, error) {
	var a handleArgs
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	// Writes go straight to the kernel (no stdio buffer), so there is
	// nothing to flush; qemu-ga's fflush does not fsync either.
	h, err := f.handles.lock(ctx, a.Handle, nil)
	if err != nil {
		return nil, err
	}
	h.mu.Unlock()
	return nil, nil
}

func (f *filesPlugin) read(ctx context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Handle int64  `json:"handle"`
		Count  *int64 `json:"count"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	h, err := f.handles.lock(ctx, a.Handle, call.ReadAhead)
	if err != nil {
		return nil, err
	}
	defer h.mu.Unlock()
	count := int64(readCountDefault)
	if a.Count != nil {
		count = *a.Count
		if count < 0 || count > readCountMax {
			return nil, sdk.Errorf("value '%d' is invalid for argument count", count)
		}
	}
	start := int64(-1)
	if call.ReadAhead != nil {
		// Only a regular file's position can be set back.
		pos, err := unix.Seek(h.fd, 0, unix.SEEK_CUR)
		if !h.regular || err != nil {
			return nil, sdk.Errorf("handle '%d' cannot be read ahead", a.Handle)
		}
		start = pos
	}
	buf, eof, err := readFull(h, int(count), call.AllocBlob)
	if err != nil {
		if start >= 0 {
			// The parser drops a failed read ahead and asks again.
			_, _ = unix.Seek(h.fd, start, unix.SEEK_SET)
		}
		return nil, sdk.Errorf("failed to read file: %s", strerror(err))
	}
	if start >= 0 {
		h.recordAhead(call.ReadAhead, start)
	}
	more := h.regular && !eof && count > 0 && len(buf) == int(count)
	return &sdk.Reply{Value: readResult{Count: len(buf), EOF: eof}, Blob: buf, More: more}, nil
}

// readFull reads up to count bytes at the handle's position, as fread does:
// it stops early only at the end of the file (eof) or on an error. The buffer
// comes from alloc once, at the size the read can fill, and is handed to the
// reply as it is (the SDK recycles it after sending).
func readFull(h *fileHandle, count int, alloc func(int) []byte) ([]byte, bool, error) {
	if count == 0 {
		return []byte{}, false, nil
	}
	size := count
	if h.regular && count > sizeCapThreshold {
		if left, ok := bytesLeft(h.fd); ok && left+readSlack < int64(size) {
			size = int(left + readSlack)
		}
	}
	buf := alloc(size)
	n, eof := 0, false
	for n < len(buf) {
		m, err := unix.Read(h.fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// A non-blocking pipe ran dry after some data: hand over what
			// was read rather than drop it (qemu-ga's fread fails).
			if err == unix.EAGAIN && n > 0 {
				break
			}
			return nil, false, err
		}
		if m == 0 {
			eof = true
			break
		}
		n += m
	}
	return buf[:n], eof, nil
}

// bytesLeft is the size of the file beyond the current position.
func bytesLeft(fd int) (int64, bool) {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0, false
	}
	pos, err := unix.Seek(fd, 0, unix.SEEK_CUR)
	if err != nil {
		return 0, false
	}
	return max(st.Size-pos, 0), true
}

func (f *filesPlugin) write(ctx context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Handle int64   `json:"handle"`
		BufB64 *string `json:"buf-b64"` // normally taken out by the parser
		Count  *int64  `json:"count"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	if a.BufB64 == nil {
		// The parser leaves an empty buf-b64 in place of the data it moved
		// to call.Blob, so an absent one was absent in the request.
		return nil, sdk.Errorf("Parameter 'buf-b64' is missing")
	}
	data := call.Blob
	// A request that did not pass through the parser (the gRPC Run path)
	// still carries the text.
	if *a.BufB64 != "" {
		b, err := base64.StdEncoding.Strict().DecodeString(*a.BufB64)
		if err != nil {
			return nil, sdk.Errorf("Base64 data contains invalid characters")
		}
		data = b
	}
	h, err := f.handles.lock(ctx, a.Handle, nil)
	if err != nil {
		return nil, err
	}
	defer h.mu.Unlock()
	count := int64(len(data))
	if a.Count != nil {
		count = *a.Count
		if count < 0 || count > int64(len(data)) {
			return nil, sdk.Errorf("value '%d' is invalid for argument count", count)
		}
	}
	n, err := writeFull(h.fd, data[:count])
	if err != nil {
		return nil, sdk.Errorf("failed to write to file: %s", strerror(err))
	}
	return writeResult{Count: n}, nil
}

// writeFull writes all of data, as fwrite does, straight from the request's
// buffer.
func writeFull(fd int, data []byte) (int, error) {
	n := 0
	for n < len(data) {
		m, err := unix.Write(fd, data[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// A full non-blocking pipe after some data: report what went
			// through rather than fail with part of it written.
			if err == unix.EAGAIN && n > 0 {
				break
			}
			return n, err
		}
		n += m
	}
	return n, nil
}

// whence is qemu-ga's GuestFileWhence: an integer (0, 1, 2) or one of
// "set", "cur", "end".
type whence struct {
	code int64
}

func (w *whence) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return sdk.Errorf("Invalid parameter type for 'whence', expected: GuestFileWhence")
	}
	switch c := b[0]; {
	case c == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return sdk.Errorf("Invalid parameter type for 'whence', expected: GuestFileWhence")
		}
		switch s {
		case "set":
			w.code = 0
		case "cur":
			w.code = 1
		case "end":
			w.code = 2
		default:
			return sdk.Errorf("Parameter 'whence' does not accept value '%s'", s)
		}
	case c == '-' || c >= '0' && c <= '9':
		if err := json.Unmarshal(b, &w.code); err != nil {
			return sdk.Errorf("Invalid parameter type for 'whence', expected: integer")
		}
	default:
		return sdk.Errorf("Invalid parameter type for 'whence', expected: GuestFileWhence")
	}
	return nil
}

func (f *filesPlugin) seek(ctx context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Handle int64  `json:"handle"`
		Offset int64  `json:"offset"`
		Whence whence `json:"whence"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	h, err := f.handles.lock(ctx, a.Handle, nil)
	if err != nil {
		return nil, err
	}
	defer h.mu.Unlock()
	var wh int
	switch a.Whence.code {
	case 0:
		wh = unix.SEEK_SET
	case 1:
		wh = unix.SEEK_CUR
	case 2:
		wh = unix.SEEK_END
	default:
		return nil, sdk.Errorf("invalid whence code %d", a.Whence.code)
	}
	pos, err := unix.Seek(h.fd, a.Offset, wh)
	if err != nil {
		return nil, sdk.Errorf("failed to seek file: %s", strerror(err))
	}
	// fseek clears the end-of-file indicator, so qemu-ga's eof is false here.
	return seekResult{Position: pos}, nil
}
