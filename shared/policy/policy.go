// Package policy decides which local callers may call which commands on a
// channel: programs inside the guest are not trusted like the host, so a
// local socket says, command by command, which users and groups may call it.
//
// A policy is written as a map from command to callers:
//
//	allow = {
//	  "*"                     = ["root"]          # every command: root
//	  "guest-get-osinfo"      = ["*"]             # anyone
//	  "guest-fsfreeze-freeze" = ["root", "@backup"]
//	}
//
// A caller is "*" (anyone, also a caller whose identity is unknown), a user
// name or a numeric uid, or "@" followed by a group name or a numeric gid
// (the caller's primary group or one of its supplementary groups, as the
// kernel reports them for the socket's peer). The command "*" stands for
// every command. Entries add up: a caller may call a command when the
// command's entry or the "*" entry names it. Nothing else is allowed.
package policy

import (
	"errors"
	"fmt"
	"os/user"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// AnyCommand is the command key that stands for every command.
const AnyCommand = "*"

// Anyone is the caller that matches every caller.
const Anyone = "*"

// ReadOnlyCommands are the commands that read harmless facts about the
// guest: the default policy of a local channel lets anyone call them.
var ReadOnlyCommands = []string{
	"guest-ping",
	"guest-info",
	"guest-get-osinfo",
	"guest-get-host-name",
	"guest-get-timezone",
	"guest-get-load",
	"guest-network-get-interfaces",
}

// DefaultRules is the policy of a local channel that declares none: anyone
// may call the read-only commands, root every command.
func DefaultRules() map[string][]string {
	rules := map[string][]string{AnyCommand: {"root"}}
	for _, c := range ReadOnlyCommands {
		rules[c] = []string{Anyone}
	}
	return rules
}

// Identity is who is calling: the peer of a local socket. UID and GID are
// -1 when unknown (a virtio-serial host has none).
type Identity struct {
	PID    int32
	UID    int32
	GID    int32
	Groups []int32 // supplementary groups (SO_PEERGROUPS); may include GID
}

// Unknown is the identity of a caller the transport cannot name.
var Unknown = Identity{PID: -1, UID: -1, GID: -1}

// String names the identity for log lines and error texts.
func (id Identity) String() string {
	if id.UID < 0 {
		return "unknown caller"
	}
	return fmt.Sprintf("uid %d gid %d pid %d", id.UID, id.GID, id.PID)
}

func (id Identity) inGroup(gid int32) bool {
	return id.GID >= 0 && id.GID == gid || slices.Contains(id.Groups, gid)
}

// callers is the resolved list of one entry.
type callers struct {
	anyone bool
	uids   []int32
	gids   []int32
}

func (c *callers) match(id Identity) bool {
	if c == nil {
		return false
	}
	if c.anyone {
		return true
	}
	if id.UID >= 0 && slices.Contains(c.uids, id.UID) {
		return true
	}
	for _, g := range c.gids {
		if id.inGroup(g) {
			return true
		}
	}
	return false
}

// Policy is a parsed, resolved policy; the zero value and nil allow nothing.
type Policy struct {
	rules map[string]*callers
	src   map[string][]string
}

// Resolver turns user and group names into ids. The zero value uses the
// system's databases (os/user: /etc/passwd and /etc/group in a static
// binary).
type Resolver struct {
	User  func(name string) (int32, error)
	Group func(name string) (int32, error)
}

func (r Resolver) user(name string) (int32, error) {
	if r.User != nil {
		return r.User(name)
	}
	u, err := user.Lookup(name)
	if err != nil {
		return 0, err
	}
	return parseID(u.Uid)
}

func (r Resolver) group(name string) (int32, error) {
	if r.Group != nil {
		return r.Group(name)
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return parseID(g.Gid)
}

func parseID(s string) (int32, error) {
	n, err := strconv.ParseUint(s, 10, 31)
	if err != nil {
		return 0, fmt.Errorf("id %q is not a number below 2^31", s)
	}
	return int32(n), nil
}

func isNumber(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// Parse checks and resolves a policy. Unknown users and groups are errors:
// a typo must not silently lock a caller out (or, worse, leave a rule that
// matches nobody unnoticed). Names are resolved once, here: a user created
// afterwards is known from the agent's next start.
func Parse(rules map[string][]string, r Resolver) (*Policy, error) {
	p := &Policy{rules: make(map[string]*callers, len(rules)), src: make(map[string][]string, len(rules))}
	var errs []error
	for _, command := range sortedKeys(rules) {
		if strings.TrimSpace(command) == "" {
			errs = append(errs, errors.New("allow: an empty command name"))
			continue
		}
		list := rules[command]
		c := &callers{}
		for _, who := range list {
			if err := c.add(who, r); err != nil {
				errs = append(errs, fmt.Errorf("allow %q: %w", command, err))
			}
		}
		p.rules[command] = c
		p.src[command] = slices.Clone(list)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

func (c *callers) add(who string, r Resolver) error {
	switch {
	case who == Anyone:
		c.anyone = true
	case who == "" || who == "@":
		return fmt.Errorf("an empty caller (write \"*\", a user, or \"@group\")")
	case strings.HasPrefix(who, "@"):
		name := who[1:]
		gid, err := resolve(name, r.group)
		if err != nil {
			return fmt.Errorf("group %q: %w", name, err)
		}
		c.gids = append(c.gids, gid)
	default:
		uid, err := resolve(who, r.user)
		if err != nil {
			return fmt.Errorf("user %q: %w", who, err)
		}
		c.uids = append(c.uids, uid)
	}
	return nil
}

func resolve(name string, byName func(string) (int32, error)) (int32, error) {
	if isNumber(name) {
		return parseID(name)
	}
	return byName(name)
}

// Allows reports whether id may call command.
func (p *Policy) Allows(command string, id Identity) bool {
	if p == nil {
		return false
	}
	return p.rules[command].match(id) || p.rules[AnyCommand].match(id)
}

// Rules returns the policy as it was written (for dumps and logs).
func (p *Policy) Rules() map[string][]string {
	if p == nil {
		return nil
	}
	out := make(map[string][]string, len(p.src))
	for k, v := range p.src {
		out[k] = slices.Clone(v)
	}
	return out
}

// Denial is the error text of a refused call: it names the command and the
// caller, and says where the rule is, so whoever reads it knows what to ask
// for.
func Denial(command, channel string, id Identity) string {
	return fmt.Sprintf("Permission denied: %s may not call %s on channel %s (its allow policy)", id, command, channel)
}

func sortedKeys(m map[string][]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
