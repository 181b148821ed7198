package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/guest-agent/guest-agent/shared/policy"
	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/guest-agent/guest-agent/shared/session"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Defaults of the listening methods.
const (
	// defaultSocketMode: qemu-ga leaves the mode to the umask (0755 with the
	// usual 022), which lets only the owner connect (connecting needs write
	// permission). 0600 gives the same access whatever the umask.
	defaultSocketMode     = 0o600
	defaultMaxConnections = 16
	listenBacklog         = 64
	// maxUnixPath is sun_path's size minus the terminating NUL.
	maxUnixPath = 107
)

// listenOptions are the options of unix-listen and vsock-listen.
type listenOptions struct {
	SocketMode     json.RawMessage `json:"socket_mode"`  // octal, unix-listen only
	SocketOwner    json.RawMessage `json:"socket_owner"` // user name or uid, unix-listen only
	SocketGroup    json.RawMessage `json:"socket_group"` // group name or gid, unix-listen only
	MaxConnections int             `json:"max_connections"`
	RetryPath      bool            `json:"retry_path"` // accepted for uniformity; listeners need no retry
	// HandOverListener (unix-listen, default true): hand the listening
	// socket itself to the parser, which accepts, checks credentials and
	// enforces max_connections; this exchange then has nothing left to do
	// and the supervisor stops it. false keeps the accept loop here.
	HandOverListener *bool `json:"hand_over_listener"`
}

var listenOptionNames = []string{"socket_mode", "socket_owner", "socket_group", "max_connections", "retry_path", "hand_over_listener"}

func (o *listenOptions) maxConnections() int {
	switch {
	case o.MaxConnections == 0:
		return defaultMaxConnections
	case o.MaxConnections < 0:
		return 0 // no limit
	default:
		return o.MaxConnections
	}
}

// listener accepts connections on a raw listening socket and hands each to
// the parser.
type listener struct {
	ch      sdk.Channel
	log     hclog.Logger
	out     *session.Outbox
	file    *os.File // the listening socket, in the netpoller so Close ends Accept
	origin  func(unix.Sockaddr) string
	creds   bool // SO_PEERCRED applies (unix sockets)
	limit   int  // 0: none
	tracker *sessionTracker
	seq     atomic.Uint64
	cleanup func() // after the listener is closed: remove the socket file...
	release func()
}

func (e *Exchange) openUnix(ctx context.Context, ch sdk.Channel, out *session.Outbox, release func()) (string, error) {
	var opts listenOptions
	if err := decodeOptions(ch, &opts, listenOptionNames...); err != nil {
		return "", err
	}
	if ch.Path == "" {
		return "", errors.New("unix-listen: a socket path is required (-p/--path)")
	}
	// The supervisor and the people reading its logs need the real place;
	// a relative path would also depend on this plugin's working directory.
	path, err := filepath.Abs(ch.Path)
	if err != nil {
		return "", fmt.Errorf("unix-listen: %w", err)
	}
	if len(path) > maxUnixPath {
		return "", fmt.Errorf("unix-listen: socket path %s is %d bytes, over the %d-byte limit of unix sockets", path, len(path), maxUnixPath)
	}
	mode, err := parseMode(opts.SocketMode)
	if err != nil {
		return "", err
	}
	uid, err := lookupID(opts.SocketOwner, "socket_owner", func(n string) (string, error) {
		u, err := user.Lookup(n)
		if err != nil {
			return "", err
		}
		return u.Uid, nil
	})
	if err != nil {
		return "", err
	}
	gid, err := lookupID(opts.SocketGroup, "socket_group", func(n string) (string, error) {
		g, err := user.LookupGroup(n)
		if err != nil {
			return "", err
		}
		return g.Gid, nil
	})
	if err != nil {
		return "", err
	}
	if err := prepareSocketDir(filepath.Dir(path), mode, ch.Logger); err != nil {
		return "", err
	}
	if err := removeStaleSocket(path, ch.Logger); err != nil {
		return "", err
	}

	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("unix-listen: socket: %w", err)
	}
	fail := func(err error) (string, error) {
		unix.Close(fd)
		return "", err
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return fail(fmt.Errorf("unix-listen: bind %s: %w", path, err))
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fail(fmt.Errorf("unix-listen: stat %s: %w", path, err))
	}
	removeOurs := func() {
		// Only our own socket: another agent may have replaced it since.
		var now unix.Stat_t
		if unix.Lstat(path, &now) == nil && now.Dev == st.Dev && now.Ino == st.Ino {
			_ = os.Remove(path)
		}
	}
	// Owner and mode are applied before listen(2): until then a connect is
	// refused, so no one ever connects under the umask's permissions.
	if uid >= 0 || gid >= 0 {
		if err := unix.Fchownat(unix.AT_FDCWD, path, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			removeOurs()
			return fail(fmt.Errorf("unix-listen: chown %s to %d:%d: %w", path, uid, gid, err))
		}
	}
	if err := unix.Fchmodat(unix.AT_FDCWD, path, mode, 0); err != nil {
		removeOurs()
		return fail(fmt.Errorf("unix-listen: chmod %s to %#o: %w", path, mode, err))
	}
	if err := unix.Listen(fd, listenBacklog); err != nil {
		removeOurs()
		return fail(fmt.Errorf("unix-listen: listen on %s: %w", path, err))
	}
	if opts.HandOverListener == nil || *opts.HandOverListener {
		f := os.NewFile(uintptr(fd), "unix-listener")
		err := out.Send(session.Event{
			Type: session.EventHandoff, Channel: ch.Name, Session: ch.Name + "/listener",
			Kind: session.KindListener, Origin: "unix:" + path,
			MaxConnections: opts.maxConnections(), ListenerPath: path,
		}, f)
		f.Close() // the parser has its own copy now
		if err != nil {
			removeOurs()
			return "", fmt.Errorf("unix-listen: hand the listener to the parser: %w", err)
		}
		release() // nothing of the channel is held here any more
		ch.Logger.Info("listening socket handed to the parser", "path", path, "mode", fmt.Sprintf("%#o", mode),
			"uid", uid, "gid", gid, "max_connections", opts.maxConnections())
		return path, nil
	}
	l, err := newListener(ch, out, fd, opts.maxConnections(), release)
	if err != nil {
		removeOurs()
		return "", err
	}
	l.creds = true
	l.origin = func(unix.Sockaddr) string { return "unix:" + path }
	l.cleanup = removeOurs
	ch.Logger.Info("listening", "path", path, "mode", fmt.Sprintf("%#o", mode), "uid", uid, "gid", gid,
		"max_connections", l.limit)
	go l.serve(ctx)
	return path, nil
}

// socketDirMode is the mode of the directories created for a socket: others
// may pass through to the socket (whose own mode says who may connect) but
// not list or change what lies beside it (the runtime directory holds the
// plugin sockets' directory).
const socketDirMode = 0o711

// prepareSocketDir makes sure the socket's directory exists and that those
// the socket's mode lets in can reach it. A missing directory is created
// socketDirMode. An existing one keeps its mode, except that a socket open
// to its group or to others gets search permission (x) added for group and
// others: the agent's runtime directory (/run/guest-agent, 0700) then holds
// commands.sock beside the plugin sockets' directories, each 0700.
func prepareSocketDir(dir string, mode uint32, log hclog.Logger) error {
	if err := os.MkdirAll(dir, socketDirMode); err != nil {
		return fmt.Errorf("unix-listen: create the socket's directory: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return fmt.Errorf("unix-listen: socket directory: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("unix-listen: %s is not a directory", dir)
	}
	perm := st.Mode & 0o7777
	if perm&0o022 != 0 && perm&unix.S_ISVTX == 0 {
		// Anyone who may write there may replace the socket with their own.
		log.Warn("the socket's directory is writable by others than its owner: they may replace the socket", "dir", dir, "mode", fmt.Sprintf("%#o", perm))
	}
	if mode&0o077 == 0 || perm&0o011 == 0o011 {
		return nil
	}
	if st.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("unix-listen: socket_mode %#o lets others than the owner connect, but they cannot reach %s (mode %#o, owner uid %d): give its group and others search permission (x)", mode, dir, perm, st.Uid)
	}
	if err := unix.Chmod(dir, perm|0o011); err != nil {
		return fmt.Errorf("unix-listen: give %s search permission for the socket's callers: %w", dir, err)
	}
	log.Info("socket directory made searchable for the socket's callers", "dir", dir, "mode", fmt.Sprintf("%#o", perm|0o011))
	return nil
}

// removeStaleSocket clears the way for bind: a socket nobody listens on is
// removed (qemu-ga leaves one behind when killed), a live one or anything
// that is not a socket is refused.
func removeStaleSocket(path string, log hclog.Logger) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unix-listen: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("unix-listen: %s exists and is not a socket; refusing to replace it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("unix-listen: another process is listening on %s", path)
	}
	if !isErrno(err, unix.ECONNREFUSED) {
		// EAGAIN (a full backlog) means a live listener too.
		return fmt.Errorf("unix-listen: %s is in use or unusable: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unix-listen: remove stale socket: %w", err)
	}
	log.Info("removed a stale socket", "path", path)
	return nil
}

// parseMode reads socket_mode: an octal string ("0660"), or a number whose
// digits are read as octal, since HCL turns socket_mode = 0660 into 660.
func parseMode(raw json.RawMessage) (uint32, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return defaultSocketMode, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		var n json.Number
		if err := json.Unmarshal(raw, &n); err != nil {
			return 0, fmt.Errorf("unix-listen: socket_mode must be an octal string like \"0660\", got %s", raw)
		}
		s = n.String()
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("unix-listen: socket_mode %s is not an octal permission like \"0660\"", raw)
	}
	return uint32(m), nil
}

// lookupID resolves a user or group given as a name, a numeric string or a
// JSON number; -1 when unset (leave as is).
func lookupID(raw json.RawMessage, opt string, byName func(string) (string, error)) (int, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return -1, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		var n int
		if err := json.Unmarshal(raw, &n); err != nil || n < 0 {
			return 0, fmt.Errorf("unix-listen: %s must be a name or a non-negative id, got %s", opt, raw)
		}
		return n, nil
	}
	if s == "" {
		return -1, nil
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return n, nil
	}
	id, err := byName(s)
	if err != nil {
		return 0, fmt.Errorf("unix-listen: %s %q: %w", opt, s, err)
	}
	n, err := strconv.Atoi(id)
	if err != nil {
		return 0, fmt.Errorf("unix-listen: %s %q has a non-numeric id %q", opt, s, id)
	}
	return n, nil
}

func (e *Exchange) openVsock(ctx context.Context, ch sdk.Channel, out *session.Outbox, release func()) (string, error) {
	var opts listenOptions
	if err := decodeOptions(ch, &opts, listenOptionNames...); err != nil {
		return "", err
	}
	if len(opts.SocketMode) > 0 || len(opts.SocketOwner) > 0 || len(opts.SocketGroup) > 0 {
		ch.Logger.Warn("socket_mode/socket_owner/socket_group do not apply to vsock-listen; ignored")
	}
	cid, port, err := parseVsockAddr(ch.Path)
	if err != nil {
		return "", err
	}
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		if isErrno(err, unix.EAFNOSUPPORT, unix.EPROTONOSUPPORT, unix.ENODEV) {
			return "", fmt.Errorf("vsock-listen: AF_VSOCK is not available in this kernel (no vsock module or transport, e.g. vmw_vsock_virtio_transport): %w", err)
		}
		return "", fmt.Errorf("vsock-listen: socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: cid, Port: port}); err != nil {
		unix.Close(fd)
		return "", fmt.Errorf("vsock-listen: bind %s: %w", formatVsock(cid, port), err)
	}
	if err := unix.Listen(fd, listenBacklog); err != nil {
		unix.Close(fd)
		return "", fmt.Errorf("vsock-listen: listen on %s: %w", formatVsock(cid, port), err)
	}
	l, err := newListener(ch, out, fd, opts.maxConnections(), release)
	if err != nil {
		return "", err
	}
	l.origin = func(sa unix.Sockaddr) string {
		if vm, ok := sa.(*unix.SockaddrVM); ok {
			return "vsock:" + formatVsock(vm.CID, vm.Port)
		}
		return "vsock:?"
	}
	resolved := formatVsock(cid, port)
	ch.Logger.Info("listening", "vsock", resolved, "max_connections", l.limit)
	go l.serve(ctx)
	return resolved, nil
}

// parseVsockAddr accepts "PORT" and qemu-ga's "CID:PORT"; the CID may be
// -1 or "any" for VMADDR_CID_ANY (the default).
func parseVsockAddr(s string) (cid, port uint32, err error) {
	if s == "" {
		return 0, 0, errors.New("vsock-listen: a port is required (-p PORT or -p CID:PORT)")
	}
	cidStr, portStr, hasCID := strings.Cut(s, ":")
	if !hasCID {
		cidStr, portStr = "", s
	}
	cid = unix.VMADDR_CID_ANY
	switch strings.ToLower(cidStr) {
	case "", "-1", "any":
	default:
		n, err := strconv.ParseUint(cidStr, 10, 32)
		if err != nil {
			return 0, 0, fmt.Errorf("vsock-listen: bad CID %q in %q", cidStr, s)
		}
		cid = uint32(n)
	}
	n, err := strconv.ParseUint(portStr, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("vsock-listen: bad port %q in %q", portStr, s)
	}
	return cid, uint32(n), nil
}

func formatVsock(cid, port uint32) string {
	if cid == unix.VMADDR_CID_ANY {
		return fmt.Sprintf("-1:%d", port)
	}
	return fmt.Sprintf("%d:%d", cid, port)
}

func newListener(ch sdk.Channel, out *session.Outbox, fd, limit int, release func()) (*listener, error) {
	tr, err := newSessionTracker()
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	// The listening socket does go into the netpoller: closing it is what
	// ends a pending accept when the channel closes.
	f := os.NewFile(uintptr(fd), "listener")
	return &listener{ch: ch, log: ch.Logger, out: out, file: f, limit: limit, tracker: tr,
		cleanup: func() {}, release: release}, nil
}

func (l *listener) serve(ctx context.Context) {
	go func() {
		<-ctx.Done()
		l.file.Close() // ends the pending accept below
	}()
	defer func() {
		l.file.Close()
		l.cleanup()
		l.tracker.close()
		l.log.Info("stopped listening")
		l.release()
	}()
	rc, err := l.file.SyscallConn()
	if err != nil {
		l.log.Error("listener unusable", "error", err)
		return
	}
	backoff := 5 * time.Millisecond
	for {
		var nfd int
		var sa unix.Sockaddr
		var aerr error
		err := rc.Read(func(fd uintptr) bool {
			nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			return !isErrno(aerr, unix.EAGAIN)
		})
		if err != nil || ctx.Err() != nil {
			return // closed
		}
		if aerr != nil {
			if isErrno(aerr, unix.ECONNABORTED, unix.EINTR) {
				continue
			}
			// Out of descriptors or memory: the pending connection stays
			// queued, so back off instead of spinning on it.
			l.log.Error("accept failed", "error", aerr, "retry_in", backoff)
			if !sdk.Sleep(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		l.handoff(nfd, sa)
	}
}

// handoff passes one accepted connection to the parser; the parser owns it
// from then on, so the exchange closes its copy at once.
func (l *listener) handoff(fd int, sa unix.Sockaddr) {
	origin := l.origin(sa)
	// Counting reads /proc: skip it until the limit could be reached.
	if l.limit > 0 && l.seq.Load() >= uint64(l.limit) {
		n, err := l.tracker.live()
		if err != nil {
			l.log.Warn("cannot count live sessions; max_connections not enforced", "error", err)
		} else if n >= l.limit {
			l.log.Warn("connection closed: max_connections reached", "max_connections", l.limit, "origin", origin)
			unix.Close(fd)
			return
		}
	}
	ev := session.Event{
		Type:    session.EventHandoff,
		Channel: l.ch.Name,
		Session: fmt.Sprintf("%s/%d", l.ch.Name, l.seq.Add(1)),
		Kind:    session.KindStream,
		Origin:  origin,
	}
	if l.creds {
		cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			l.log.Warn("connection closed: no peer credentials", "error", err)
			unix.Close(fd)
			return
		}
		ev.Peer = &session.Peer{PID: cred.Pid, UID: int32(cred.Uid), GID: int32(cred.Gid)}
		ev.Peer.Groups, _ = policy.PeerGroups(fd) // older kernels: the primary group only
		ev.Peer.Groups = ev.Peer.Groups[:min(len(ev.Peer.Groups), session.MaxPeerGroups)]
	}
	if err := l.tracker.add(fd); err != nil {
		l.log.Warn("session will not count towards max_connections", "error", err)
	}
	f, err := unpolledFile(fd, "session")
	if err != nil {
		l.log.Error("connection closed", "error", err)
		return
	}
	defer f.Close()
	if err := l.out.Send(ev, f); err != nil {
		l.log.Error("connection closed: handoff to the parser failed", "error", err, "origin", origin)
		return
	}
	if ev.Peer != nil {
		l.log.Debug("session handed to the parser", "session", ev.Session, "origin", origin,
			"pid", ev.Peer.PID, "uid", ev.Peer.UID, "gid", ev.Peer.GID)
	} else {
		l.log.Debug("session handed to the parser", "session", ev.Session, "origin", origin)
	}
}
