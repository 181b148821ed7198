package xenstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Op is the type field of an xs_wire.h message (enum xsd_sockmsg_type).
type Op uint32

// Message types from xs_wire.h. Values are fixed by the protocol.
const (
	OpControl            Op = 0 // XS_CONTROL, formerly XS_DEBUG
	OpDirectory          Op = 1
	OpRead               Op = 2
	OpGetPerms           Op = 3
	OpWatch              Op = 4
	OpUnwatch            Op = 5
	OpTransactionStart   Op = 6
	OpTransactionEnd     Op = 7
	OpIntroduce          Op = 8
	OpRelease            Op = 9
	OpGetDomainPath      Op = 10
	OpWrite              Op = 11
	OpMkdir              Op = 12
	OpRm                 Op = 13
	OpSetPerms           Op = 14
	OpWatchEvent         Op = 15
	OpError              Op = 16
	OpIsDomainIntroduced Op = 17
	OpResume             Op = 18
	OpSetTarget          Op = 19
	// 20 was XS_RESTRICT, since removed from the protocol.
	OpResetWatches  Op = 21
	OpDirectoryPart Op = 22
)

var opNames = [...]string{
	OpControl:            "CONTROL",
	OpDirectory:          "DIRECTORY",
	OpRead:               "READ",
	OpGetPerms:           "GET_PERMS",
	OpWatch:              "WATCH",
	OpUnwatch:            "UNWATCH",
	OpTransactionStart:   "TRANSACTION_START",
	OpTransactionEnd:     "TRANSACTION_END",
	OpIntroduce:          "INTRODUCE",
	OpRelease:            "RELEASE",
	OpGetDomainPath:      "GET_DOMAIN_PATH",
	OpWrite:              "WRITE",
	OpMkdir:              "MKDIR",
	OpRm:                 "RM",
	OpSetPerms:           "SET_PERMS",
	OpWatchEvent:         "WATCH_EVENT",
	OpError:              "ERROR",
	OpIsDomainIntroduced: "IS_DOMAIN_INTRODUCED",
	OpResume:             "RESUME",
	OpSetTarget:          "SET_TARGET",
	OpResetWatches:       "RESET_WATCHES",
	OpDirectoryPart:      "DIRECTORY_PART",
}

// String returns the xs_wire.h name without its XS_ prefix.
func (o Op) String() string {
	if int(o) < len(opNames) && opNames[o] != "" {
		return opNames[o]
	}
	return fmt.Sprintf("Op(%d)", uint32(o))
}

const (
	// HeaderSize is the size of struct xsd_sockmsg.
	HeaderSize = 16
	// PayloadMax is XENSTORE_PAYLOAD_MAX. xenstored kills a connection
	// that sends a longer payload, so the client refuses to send one.
	PayloadMax = 4096
	// AbsPathMax is XENSTORE_ABS_PATH_MAX.
	AbsPathMax = 3072
	// RelPathMax is XENSTORE_REL_PATH_MAX.
	RelPathMax = 2048
)

// Message is one xs_wire.h message: header fields plus payload.
type Message struct {
	Type    Op
	ReqID   uint32
	TxID    uint32
	Payload []byte
}

// ErrPayloadTooLarge reports a payload over PayloadMax, in either direction.
var ErrPayloadTooLarge = errors.New("xenstore: payload exceeds XENSTORE_PAYLOAD_MAX (4096 bytes)")

// MarshalBinary encodes m as header plus payload in one buffer, so that a
// transport sees each message as a single write (the xenbus device prefers
// it that way).
func (m Message) MarshalBinary() ([]byte, error) {
	if len(m.Payload) > PayloadMax {
		return nil, fmt.Errorf("%s of %d bytes: %w", m.Type, len(m.Payload), ErrPayloadTooLarge)
	}
	b := make([]byte, HeaderSize+len(m.Payload))
	binary.LittleEndian.PutUint32(b[0:], uint32(m.Type))
	binary.LittleEndian.PutUint32(b[4:], m.ReqID)
	binary.LittleEndian.PutUint32(b[8:], m.TxID)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(m.Payload)))
	copy(b[HeaderSize:], m.Payload)
	return b, nil
}

// WriteMessage writes m to w in a single Write call.
func WriteMessage(w io.Writer, m Message) error {
	b, err := m.MarshalBinary()
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("xenstore: write %s: %w", m.Type, err)
	}
	return nil
}

// ReadMessage reads one message from r, refusing a payload over PayloadMax
// (ErrPayloadTooLarge) as xenstored does for requests. It returns io.EOF
// only when r ends cleanly between messages; a message cut short gives
// io.ErrUnexpectedEOF.
func ReadMessage(r io.Reader) (Message, error) {
	return ReadMessageMax(r, PayloadMax)
}

// ReadMessageMax is ReadMessage with another payload limit. A header
// announcing more than limit bytes is an error (ErrPayloadTooLarge) and the
// stream can no longer be trusted: nothing of the payload is read.
func ReadMessageMax(r io.Reader, limit uint32) (Message, error) {
	var h [HeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Message{}, err
	}
	m := Message{
		Type:  Op(binary.LittleEndian.Uint32(h[0:])),
		ReqID: binary.LittleEndian.Uint32(h[4:]),
		TxID:  binary.LittleEndian.Uint32(h[8:]),
	}
	n := binary.LittleEndian.Uint32(h[12:])
	if n > limit {
		return Message{}, fmt.Errorf("incoming %s with %d bytes (limit %d): %w", m.Type, n, limit, ErrPayloadTooLarge)
	}
	m.Payload = make([]byte, n)
	if _, err := io.ReadFull(r, m.Payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Message{}, err
	}
	return m, nil
}

// JoinStrings builds a payload of strings each followed by a NUL, the
// xenstore.txt "<foo>|*" form used by most requests.
func JoinStrings(s ...string) []byte {
	n := 0
	for _, x := range s {
		n += len(x) + 1
	}
	b := make([]byte, 0, n)
	for _, x := range s {
		b = append(b, x...)
		b = append(b, 0)
	}
	return b
}

// SplitStrings parses a "<foo>|*" payload: NUL-terminated strings. A final
// string without its NUL is tolerated and returned too.
func SplitStrings(p []byte) []string {
	if len(p) == 0 {
		return nil
	}
	p = bytes.TrimSuffix(p, []byte{0})
	parts := bytes.Split(p, []byte{0})
	out := make([]string, len(parts))
	for i, x := range parts {
		out[i] = string(x)
	}
	return out
}
