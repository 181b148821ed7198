package wire

import (
	"errors"
	"fmt"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
)

// Error classes of the qga protocol. Other dialects map them to their own
// status codes.
const (
	ClassGenericError    = "GenericError"
	ClassCommandNotFound = "CommandNotFound"
)

// Error is a command failure with its qga error class. Handlers return it
// (or any error, which becomes a GenericError).
type Error struct {
	Class string
	Desc  string
}

func (e *Error) Error() string { return e.Desc }

// Errorf returns a GenericError with a formatted description.
func Errorf(format string, args ...any) error {
	return &Error{Class: ClassGenericError, Desc: fmt.Sprintf(format, args...)}
}

// ErrorWithClass returns an error of the given qga class.
func ErrorWithClass(class, format string, args ...any) error {
	return &Error{Class: class, Desc: fmt.Sprintf(format, args...)}
}

// ToProtoError converts any error to its wire form: an *Error keeps its
// class, any other error is a GenericError.
func ToProtoError(err error) *pb.Error {
	var e *Error
	if errors.As(err, &e) {
		return &pb.Error{Class: e.Class, Desc: e.Desc}
	}
	return &pb.Error{Class: ClassGenericError, Desc: err.Error()}
}
