package dialect

import (
	"fmt"
	"time"
)

// Failure says why the engine answered a command without a plugin's
// result: it refused it (unknown, disabled, frozen, bad bulk argument) or
// the plugin could not answer it (timeout, unavailable). The engine puts it
// in Outcome.Failure beside a plain rendering in Outcome.Err; a dialect
// words it in its protocol's terms.
type Failure struct {
	Kind FailureKind
	// Command is the command's name.
	Command string
	// Member names the bulk argument (FailBlobNotString, FailBlobNotBase64).
	Member string
	// Timeout is the command timeout that passed (FailTimeout).
	Timeout time.Duration
	// Cause is what went wrong with the plugin (FailUnavailable).
	Cause error
	// Caller names who was refused (FailDenied): "uid 1000 gid 1000 pid
	// 4242", and Channel where.
	Caller, Channel string
}

// FailureKind is the reason of a Failure. Kinds may be added: a dialect
// renders one it does not know from Outcome.Err.
type FailureKind int

// The reasons the engine answers a command itself.
const (
	// FailUnknown: no such command on this channel (no plugin serves it
	// for the channel's dialect, and it is not a local command).
	FailUnknown FailureKind = iota + 1
	// FailDisabled: the channel's allow or block list refuses the command,
	// or its plugin's route is disabled.
	FailDisabled
	// FailFrozen: the guest's filesystems are frozen and the command is
	// not allowed while frozen.
	FailFrozen
	// FailArgsNotObject: the arguments of a command with a bulk argument
	// are not a JSON object.
	FailArgsNotObject
	// FailBlobNotString: the bulk argument (Member) is not a JSON string.
	FailBlobNotString
	// FailBlobNotBase64: the bulk argument (Member) is not valid base64.
	FailBlobNotBase64
	// FailTimeout: the command did not finish within the command timeout.
	FailTimeout
	// FailUnavailable: the plugin could not run the command (it exited
	// while running it, or could not be started); see Cause.
	FailUnavailable
	// FailDenied: the channel's policy per caller does not let this
	// caller (Caller) call the command.
	FailDenied
)

// Error is the plain English rendering the engine puts in Outcome.Err.
func (f *Failure) Error() string {
	switch f.Kind {
	case FailUnknown:
		return fmt.Sprintf("unknown command %s", f.Command)
	case FailDisabled:
		return fmt.Sprintf("command %s is disabled", f.Command)
	case FailFrozen:
		return fmt.Sprintf("command %s is refused while the guest's filesystems are frozen", f.Command)
	case FailArgsNotObject:
		return fmt.Sprintf("command %s: the arguments must be an object", f.Command)
	case FailBlobNotString:
		return fmt.Sprintf("command %s: argument %s must be a string", f.Command, f.Member)
	case FailBlobNotBase64:
		return fmt.Sprintf("command %s: argument %s is not valid base64", f.Command, f.Member)
	case FailTimeout:
		return fmt.Sprintf("command %s timed out after %s", f.Command, f.Timeout)
	case FailUnavailable:
		return fmt.Sprintf("command %s failed: %v", f.Command, f.Cause)
	case FailDenied:
		return fmt.Sprintf("Permission denied: %s may not call %s on channel %s (its allow policy)", f.Caller, f.Command, f.Channel)
	}
	return fmt.Sprintf("command %s failed", f.Command)
}

// Refused tells whether the command was refused before it ran (unknown,
// disabled, frozen, bad bulk argument), as against failed while running.
func (f *Failure) Refused() bool {
	switch f.Kind {
	case FailTimeout, FailUnavailable:
		return false
	}
	return true
}
