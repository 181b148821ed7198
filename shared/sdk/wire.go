package sdk

import (
	"errors"
	"os"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"

	"github.com/guest-agent/guest-agent/shared/internal/wire"
	"github.com/guest-agent/guest-agent/shared/rpcplugin"
	"github.com/hashicorp/go-hclog"
)

// Error classes of the qga protocol. Other dialects map them to their own
// status codes.
const (
	ClassGenericError    = wire.ClassGenericError
	ClassCommandNotFound = wire.ClassCommandNotFound
)

// Error is a command failure with its qga error class. Handlers return it
// (or any error, which becomes a GenericError).
type Error = wire.Error

// Errorf returns a GenericError with a formatted description.
func Errorf(format string, args ...any) error { return wire.Errorf(format, args...) }

// ErrorWithClass returns an error of the given qga class.
func ErrorWithClass(class, format string, args ...any) error {
	return wire.ErrorWithClass(class, format, args...)
}

// ProtoError converts an error to its wire form, as a command's failure
// reaches a dialect: an *Error keeps its class, any other error is a
// GenericError.
func ProtoError(err error) *pb.Error { return wire.ToProtoError(err) }

// DecodeArgs decodes a command's arguments object into v (a pointer to a
// struct) with qemu-ga's validation and error texts:
//
//   - a member not declared by the struct: "Parameter 'x' is unexpected"
//   - a required member absent: "Parameter 'x' is missing"
//   - a member of the wrong type: "Invalid parameter type for 'x', expected: integer"
//
// A field is optional when it is a pointer, a slice or a map, or its json tag
// has ",omitempty"; every other field is required. Fields whose type
// implements json.Unmarshaler (alternates such as "bool or enum") validate
// themselves and should return an *Error.
func DecodeArgs(raw []byte, v any) error { return wire.DecodeArgs(raw, v) }

// FlexString is an option that accepts a JSON string or number: HCL writes
// `domid = 5` as a number where a plugin wants text.
type FlexString = wire.FlexString

// Member is one member of a JSON object, its value as raw JSON.
type Member = wire.Member

// SplitObject splits a JSON object into its members without decoding the
// values, validating the whole document as it goes and refusing duplicate
// keys, as QEMU's parser does; fast on megabytes of base64 in one string.
func SplitObject(b []byte) ([]Member, error) { return wire.SplitObject(b) }

// StringValue returns the contents of a raw JSON string; ok is false when v
// is not a string. Strings without escapes are returned without copying.
func StringValue(v []byte) (s []byte, ok bool) { return wire.StringValue(v) }

// EncodeBase64 writes the standard (padded) base64 encoding of src to dst,
// which must hold base64.StdEncoding.EncodedLen(len(src)) bytes, at about
// twice the speed of encoding/base64.
func EncodeBase64(dst, src []byte) { wire.EncodeBase64(dst, src) }

// DecodeBase64Strict decodes standard padded base64 text into dst (which
// must hold base64.StdEncoding.DecodedLen(len(text)) bytes) and returns the
// length, with the results and errors of base64.StdEncoding.Strict().Decode
// at about twice its speed.
func DecodeBase64Strict(dst, text []byte) (int, error) { return wire.DecodeBase64Strict(dst, text) }

// IsTimeout tells whether a read error is a deadline set with
// StreamSession.SetReadDeadline passing.
func IsTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// NewLogger returns the logger a plugin should use: go-plugin forwards its
// JSON lines on stderr into the supervisor's log with the plugin's name.
func NewLogger(name string) hclog.Logger { return rpcplugin.NewLogger(name) }
