package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/guest-agent/guest-agent/shared/negotiator"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// hostFlags configure guest-agent host, the guest calling its host over
// negotiator's guest-to-host channel (negotiator-guest's --list-commands
// and --execute).
type hostFlags struct {
	device  string
	relay   string
	timeout time.Duration
	stdin   bool
}

// Where the guest-to-host port and the agent's relay of it are by default.
const (
	defaultHostDevice = "/dev/virtio-ports/" + negotiator.GuestToHostChannel
	defaultHostRelay  = "/run/guest-agent/negotiator-host.sock"
)

func newHostCmd() *cobra.Command {
	h := &hostFlags{}
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Call the host over negotiator's guest-to-host channel",
		Long: `guest-agent host runs the host's commands (guestctl daemon answers them) over
the virtio-serial port ` + negotiator.GuestToHostChannel + `. When the agent holds
the port (a negotiator_host block in agent.hcl), the call goes through the
agent's socket (--relay) and calls of several programs wait their turn;
otherwise the port is opened directly, and programs calling at the same time
queue on a lock instead of failing with EBUSY. --timeout bounds the whole
call, waiting included (0: none).`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&h.device, "device", defaultHostDevice, "the guest-to-host port (a character device, or a unix socket); found by name in /sys/class/virtio-ports when absent")
	pf.StringVar(&h.relay, "relay", defaultHostRelay, "the agent's socket for the port, used when it exists")
	pf.DurationVar(&h.timeout, "timeout", negotiator.DefaultTimeout*time.Second, "the whole call (0: none)")
	cmd.AddCommand(&cobra.Command{
		Use: "list-commands", Short: "List the commands the host offers", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return h.run(cmd, func(ctx context.Context, c *negotiator.Client) error {
				names, err := c.ListCommands(ctx)
				for _, n := range names {
					fmt.Fprintln(cmd.OutOrStdout(), n)
				}
				return err
			})
		},
	})
	execCmd := &cobra.Command{
		Use:   "exec COMMAND [ARGS...]",
		Short: "Run a host command, print its output and exit with its status",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var input *string
			if h.stdin {
				data, err := io.ReadAll(cmd.InOrStdin())
				if err != nil {
					return fmt.Errorf("read stdin: %w", err)
				}
				s := string(data)
				input = &s
			}
			return h.run(cmd, func(ctx context.Context, c *negotiator.Client) error {
				out, err := c.Execute(ctx, args, input)
				if err != nil {
					return err
				}
				if out != "" && !strings.HasSuffix(out, "\n") {
					out += "\n"
				}
				_, err = io.WriteString(cmd.OutOrStdout(), out)
				return err
			})
		},
	}
	execCmd.Flags().BoolVar(&h.stdin, "stdin", false, "pass standard input to the host command")
	execCmd.Flags().SetInterspersed(false)
	cmd.AddCommand(execCmd)
	return cmd
}

// run connects, makes the call and turns a failed host command into this
// process's exit status.
func (h *hostFlags) run(cmd *cobra.Command, call func(context.Context, *negotiator.Client) error) error {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	if h.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.timeout)
		defer cancel()
	}
	conn, err := h.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	c := negotiator.NewClient(conn, 0) // ctx holds the deadline
	err = call(ctx, c)
	var re *negotiator.RemoteError
	if errors.As(err, &re) {
		fmt.Fprintln(cmd.ErrOrStderr(), "guest-agent host:", re.Msg)
		os.Exit(remoteStatus(re.Msg))
	}
	return err
}

// remoteStatus is the exit status for a failed call: the host command's
// own, found in the host's error ("command 'x' failed: exit status 3:
// ..."), else 1.
func remoteStatus(msg string) int {
	const marker = "failed: exit status "
	if _, rest, ok := strings.Cut(msg, marker); ok {
		digits, _, _ := strings.Cut(rest, ":")
		if n, err := strconv.Atoi(digits); err == nil && n > 0 && n < 256 {
			return n
		}
	}
	return 1
}

// connect reaches the host: through the agent's relay when it runs, else
// the port itself, one caller at a time.
func (h *hostFlags) connect(ctx context.Context) (io.ReadWriteCloser, error) {
	if h.relay != "" {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", h.relay)
		if err == nil {
			return conn, nil
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("the agent's relay %s: %w", h.relay, err)
		}
	}
	dev, err := findHostPort(h.device)
	if err != nil {
		return nil, err
	}
	return openHostPort(ctx, dev)
}

// openHostPort opens the port, or connects to it when it is a unix socket
// (a test's stand-in for the port).
func openHostPort(ctx context.Context, dev string) (io.ReadWriteCloser, error) {
	if st, err := os.Stat(dev); err == nil && st.Mode()&os.ModeSocket != 0 {
		var d net.Dialer
		return d.DialContext(ctx, "unix", dev)
	}
	return openPortQueued(ctx, dev)
}

// findHostPort returns dev when it exists, else the port of that name from
// /sys/class/virtio-ports (udev's /dev/virtio-ports links may be missing
// in a minimal guest).
func findHostPort(dev string) (string, error) {
	if _, err := os.Stat(dev); err == nil {
		return dev, nil
	}
	name := filepath.Base(dev)
	ports, _ := os.ReadDir("/sys/class/virtio-ports")
	for _, p := range ports {
		b, err := os.ReadFile(filepath.Join("/sys/class/virtio-ports", p.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Join("/dev", p.Name()), nil
		}
	}
	return "", fmt.Errorf("no port %s (is the channel defined for this guest and virtio_console loaded?)", dev)
}

// openPortQueued opens the port for this caller alone. A virtio-serial
// port has one opener at a time (others get EBUSY): callers of this
// program queue on a lock beside it, and a port held by something else is
// retried until ctx ends.
func openPortQueued(ctx context.Context, dev string) (io.ReadWriteCloser, error) {
	lock, err := lockPort(ctx, dev)
	if err != nil {
		return nil, err
	}
	delay := 10 * time.Millisecond
	for {
		f, err := os.OpenFile(dev, os.O_RDWR|syscall.O_NOCTTY, 0)
		if err == nil {
			return &lockedPort{File: f, lock: lock}, nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			lock.Close()
			return nil, fmt.Errorf("open %s: %w", dev, err)
		}
		select {
		case <-ctx.Done():
			lock.Close()
			return nil, fmt.Errorf("open %s: still busy: %w", dev, context.Cause(ctx))
		case <-time.After(delay):
		}
		delay = min(delay*2, 200*time.Millisecond)
	}
}

// lockedPort releases the callers' lock with the port.
type lockedPort struct {
	*os.File
	lock *os.File
}

func (p *lockedPort) Close() error {
	err := p.File.Close()
	p.lock.Close()
	return err
}

// lockPort takes an exclusive lock that all callers of dev share (in /run,
// which is a tmpfs: never frozen, emptied by a reboot).
func lockPort(ctx context.Context, dev string) (*os.File, error) {
	dir := "/run/guest-agent"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		dir = os.TempDir()
	}
	path := filepath.Join(dir, "host-"+filepath.Base(dev)+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return nil, fmt.Errorf("lock for %s: %w", dev, err)
	}
	delay := 5 * time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for other callers of %s: %w", dev, context.Cause(ctx))
		case <-time.After(delay):
		}
		delay = min(delay*2, 50*time.Millisecond)
	}
}
