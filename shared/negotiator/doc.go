// Package negotiator is the wire protocol of negotiator (version 0.12.2), a
// channel in each direction between a KVM/QEMU host and its guests: the
// framing, requests and replies, a client, a serving loop and the runner of
// command directories. The guest's dialect (parser-json), the guest-side
// client (guest-agent host) and the host side (guestctl) all use it.
//
// A frame is an ASCII decimal length, "\n", then exactly that many bytes of
// JSON with no trailing newline. The original counts Python characters, so
// everything sent here is escaped to ASCII: a count of bytes is then a count
// of characters for either kind of peer.
//
// A request is {"method": NAME, "args": [...], "kw": {...}} (the seed
// document's {"command", "arguments", "keyword-arguments"} is accepted too);
// a reply is {"success": true, "result": VALUE} or {"success": false,
// "error": TEXT}. There are no request ids: one request, one reply, in order.
package negotiator

// Channel names: the virtio-serial port names in the guest and the target
// names of the domain's <channel type='unix'> elements on the host.
const (
	// HostToGuestChannel carries the host's calls, served by the guest.
	HostToGuestChannel = "negotiator-host-to-guest.0"
	// GuestToHostChannel carries the guest's calls, served by the host.
	GuestToHostChannel = "negotiator-guest-to-host.0"
)

// Defaults shared by both sides.
const (
	// DefaultTimeout bounds one call, as negotiator's DEFAULT_TIMEOUT.
	DefaultTimeout = 10 // seconds
	// DefaultUserCommandsDir holds the user-defined commands.
	DefaultUserCommandsDir = "/usr/lib/negotiator/commands"
	// MaxLengthDigits bounds the length line: 20 digits hold any int64.
	MaxLengthDigits = 20
	// DefaultMaxMessageBytes bounds one frame's JSON, both ways.
	DefaultMaxMessageBytes = 64 << 20
)
