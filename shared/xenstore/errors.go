package xenstore

import (
	"errors"
	"fmt"
)

// Sentinel errors for the errno names xenstored replies with (the xsd_errors
// table of xs_wire.h). Match them with errors.Is; an *Error carries the raw
// string as well.
var (
	ErrInvalid    = errors.New("xenstore: invalid argument")            // EINVAL
	ErrPermission = errors.New("xenstore: permission denied")           // EACCES
	ErrExist      = errors.New("xenstore: already exists")              // EEXIST
	ErrIsDir      = errors.New("xenstore: is a directory")              // EISDIR
	ErrNotFound   = errors.New("xenstore: no such node")                // ENOENT
	ErrNoMemory   = errors.New("xenstore: out of memory")               // ENOMEM
	ErrNoSpace    = errors.New("xenstore: quota exceeded")              // ENOSPC
	ErrIO         = errors.New("xenstore: input/output error")          // EIO
	ErrNotEmpty   = errors.New("xenstore: not empty")                   // ENOTEMPTY
	ErrNotSupp    = errors.New("xenstore: operation not supported")     // ENOSYS
	ErrReadOnly   = errors.New("xenstore: read-only connection")        // EROFS
	ErrBusy       = errors.New("xenstore: busy")                        // EBUSY
	ErrAgain      = errors.New("xenstore: try again")                   // EAGAIN
	ErrIsConn     = errors.New("xenstore: already connected")           // EISCONN
	ErrTooBig     = errors.New("xenstore: argument or quota too large") // E2BIG
)

// Connection-level errors, not sent by xenstored.
var (
	// ErrClosed is returned by calls on a Client after Close.
	ErrClosed = errors.New("xenstore: client closed")
	// ErrDisconnected wraps the cause when the connection to xenstored
	// broke: pending and later calls fail with it, watch channels close, and
	// the user is expected to Dial again.
	ErrDisconnected = errors.New("xenstore: connection lost")
	// ErrProtocol reports a reply that does not follow xs_wire.h.
	ErrProtocol = errors.New("xenstore: protocol error")
)

var errnoSentinels = map[string]error{
	"EINVAL":    ErrInvalid,
	"EACCES":    ErrPermission,
	"EEXIST":    ErrExist,
	"EISDIR":    ErrIsDir,
	"ENOENT":    ErrNotFound,
	"ENOMEM":    ErrNoMemory,
	"ENOSPC":    ErrNoSpace,
	"EIO":       ErrIO,
	"ENOTEMPTY": ErrNotEmpty,
	"ENOSYS":    ErrNotSupp,
	"EROFS":     ErrReadOnly,
	"EBUSY":     ErrBusy,
	"EAGAIN":    ErrAgain,
	"EISCONN":   ErrIsConn,
	"E2BIG":     ErrTooBig,
}

// Error is an XS_ERROR reply from xenstored.
type Error struct {
	Op   Op     // request that failed
	Path string // its first argument (path, domid, ...), if any
	Code string // errno name as sent, e.g. "ENOENT"
}

func (e *Error) Error() string {
	if e.Path != "" {
		return fmt.Sprintf("xenstore: %s %s: %s", e.Op, e.Path, e.Code)
	}
	return fmt.Sprintf("xenstore: %s: %s", e.Op, e.Code)
}

// Is makes errors.Is(err, ErrNotFound) and friends work. Codes outside the
// xs_wire.h table match nothing but are still reported in Code.
func (e *Error) Is(target error) bool {
	s, ok := errnoSentinels[e.Code]
	return ok && s == target
}

// ErrorCode returns the sentinel's errno name for the test server and other
// code that has to produce XS_ERROR replies, e.g. ErrorCode(ErrNotFound) is
// "ENOENT". It returns "EINVAL" for errors it does not know.
func ErrorCode(err error) string {
	var xe *Error
	if errors.As(err, &xe) {
		return xe.Code
	}
	for code, s := range errnoSentinels {
		if errors.Is(err, s) {
			return code
		}
	}
	return "EINVAL"
}
