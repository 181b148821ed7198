package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// exitCode ends guestctl with a code and no message of its own: the guest
// command's status.
type exitCode int

func (e exitCode) Error() string { return "exit status " + strconv.Itoa(int(e)) }

const (
	// exitTimedOut is timeout(1)'s code for a command its limit killed.
	exitTimedOut = 124
	// exitFailed is exec's code when guestctl itself fails (as ssh's 255),
	// so that it is not taken for the command's own status.
	exitFailed = 255
	// defaultPath is the PATH given with --env when --env sets none:
	// guest-exec's env replaces the whole environment.
	defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// readWait is how long one guest-exec-read waits for output. The agent
	// runs one plugin's commands of a session in order, so a signal or
	// stdin for the command waits behind a pending read: this bounds how
	// late Ctrl-C or input may reach it.
	readWait = 250 * time.Millisecond
	// stdinChunk is what one guest-exec-write carries at most.
	stdinChunk = 256 << 10
)

type execFlags struct {
	timeout time.Duration
	env     []string
	cwd     string
	user    string
	group   string
	stdin   bool
}

func newExecCmd(o *options) *cobra.Command {
	f := &execFlags{}
	cmd := &cobra.Command{
		Use:   "exec [flags] -- CMD [ARGS...]",
		Short: "Run a program in the guest, streaming its output; exit with its status",
		Long: `exec runs CMD with ARGS in the guest (no shell: give "sh -c '...'" for one) and
shows its stdout and stderr on guestctl's as they come. guestctl exits with
the command's exit code, 128+N when signal N ended it, 124 when --timeout
killed it, and 255 when guestctl itself failed.

Ctrl-C (SIGINT, also SIGTERM and SIGHUP to guestctl) sends SIGTERM to the
command's process group in the guest; a second one sends SIGKILL. With -i,
guestctl's stdin is the command's, passed while it runs.

With guest-agent, output streams through guest-exec-read, stdin through
guest-exec-write, --timeout, --cwd and --user are applied in the guest, and
signals reach the whole process group (guest-exec-terminate). qemu-ga
serves none of these: guestctl then polls guest-exec-status with a backoff
and shows the output when the command ends, sends stdin (read to its end
first) as input-data, enforces --timeout from the host, signals the process
alone (by running kill in the guest; SIGKILL follows a SIGTERM that has not
ended it within 3 s, and guestctl gives up waiting 3 s after a SIGKILL,
since qemu-ga reports the end only once every process holding the output
has ended), and refuses --cwd and --user.

With --all or several --domain names the command runs in every guest at
once (--parallel), without -i; each guest's output comes when its command
has ended, each line prefixed with the guest's name (--json: one object per
guest with exit, stdout, stderr), and guestctl exits 1 when any failed or
exited non-zero. Each command then runs at most its --timeout (default 5m).

--env K=V sets the command's whole environment, as guest-exec does; PATH is
added (` + defaultPath[5:] + `) unless given.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, argv []string) error {
			if o.multi() {
				return runExecAll(cmd, o, f, argv)
			}
			code, err := runExec(cmd, o, f, argv)
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "guestctl:", err)
				return exitCode(exitFailed)
			}
			if code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
	cmd.Flags().SetInterspersed(false) // what follows CMD is CMD's
	cmd.Flags().DurationVar(&f.timeout, "timeout", 0, "time limit of the command: its process group is killed when it passes (exit 124); 0: none")
	cmd.Flags().StringArrayVarP(&f.env, "env", "e", nil, "K=V of the command's environment (repeatable); sets the whole environment")
	cmd.Flags().StringVar(&f.cwd, "cwd", "", "working directory in the guest (guest-agent; default /)")
	cmd.Flags().StringVarP(&f.user, "user", "u", "", "user to run as, name or uid (guest-agent)")
	cmd.Flags().StringVar(&f.group, "group", "", "group to run as, name or gid (guest-agent)")
	cmd.Flags().BoolVarP(&f.stdin, "stdin", "i", false, "pass guestctl's stdin to the command")
	return cmd
}

// execStatus is guest-exec-status's and guest-exec-read's result.
type execStatus struct {
	Exited       bool   `json:"exited"`
	Exitcode     *int   `json:"exitcode"`
	Signal       *int   `json:"signal"`
	OutData      string `json:"out-data"`
	ErrData      string `json:"err-data"`
	OutTruncated bool   `json:"out-truncated"`
	ErrTruncated bool   `json:"err-truncated"`
	TimedOut     bool   `json:"timed-out"`
	OutOffset    int64  `json:"out-offset"`
	ErrOffset    int64  `json:"err-offset"`
}

// runner is one exec in progress.
type runner struct {
	o        *options
	f        *execFlags
	a        *agent
	extended bool // the agent serves guest-exec-read, -write, -terminate
	pid      int64
	stdout   io.Writer
	stderr   io.Writer
	started  time.Time

	// sigq carries the signals to send, from forwardSignals to the loop
	// that follows the command, which sends them between its reads.
	sigq chan string

	mu       sync.Mutex
	timedOut bool      // host-side limit (qemu-ga)
	killedAt time.Time // when SIGKILL was sent from the host (qemu-ga)
	termAt   time.Time // when SIGTERM was (qemu-ga)
}

// abandonAfter is how long guestctl waits for a qemu-ga guest's command
// to be reported exited after it killed it: qemu-ga says exited only once
// the output pipes are closed, and what the command started (not in a
// group of its own under qemu-ga) may hold them.
const abandonAfter = 3 * time.Second

func runExec(cmd *cobra.Command, o *options, f *execFlags, argv []string) (int, error) {
	ctx := cmdContext(cmd)
	a, err := openAgent(ctx, o)
	if err != nil {
		return 0, err
	}
	defer a.Close()
	r := &runner{o: o, f: f, a: a, stdout: cmd.OutOrStdout(), stderr: cmd.ErrOrStderr(), sigq: make(chan string, 8),
		extended: a.serves("guest-exec-read", "guest-exec-write", "guest-exec-terminate")}
	if !r.extended && (f.cwd != "" || f.user != "" || f.group != "") {
		return 0, errors.New("--cwd, --user and --group need guest-agent: this agent (qemu-ga?) does not serve them")
	}
	args := map[string]any{"path": argv[0], "arg": argv[1:], "capture-output": true}
	if len(f.env) > 0 {
		for _, kv := range f.env {
			if !strings.Contains(kv, "=") {
				return 0, fmt.Errorf("--env %q is not K=V", kv)
			}
		}
		args["env"] = withPath(f.env)
	}
	if r.extended {
		if f.timeout > 0 {
			args["timeout"] = f.timeout.Seconds()
		}
		if f.cwd != "" {
			args["cwd"] = f.cwd
		}
		if f.user != "" {
			args["user"] = f.user
		}
		if f.group != "" {
			args["group"] = f.group
		}
		if f.stdin {
			args["input-pipe"] = true
		}
	} else if f.stdin {
		// qemu-ga takes stdin only as a whole, with the request.
		in, err := io.ReadAll(cmd.InOrStdin())
		if err != nil {
			return 0, fmt.Errorf("read stdin: %w", err)
		}
		args["input-data"] = base64.StdEncoding.EncodeToString(in)
	}

	// Signals are taken before the command starts, so that none is lost
	// between its start and the loop.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	var started struct {
		Pid int64 `json:"pid"`
	}
	if err := a.call(ctx, o, "guest-exec", args, &started); err != nil {
		return 0, err
	}
	r.pid, r.started = started.Pid, time.Now()

	stopSignals := make(chan struct{})
	defer close(stopSignals)
	go r.forwardSignals(sigs, stopSignals)
	var input <-chan []byte
	if r.extended && f.stdin {
		input = readChunks(cmd.InOrStdin(), stopSignals)
	}
	var st *execStatus
	if r.extended {
		st, err = r.stream(ctx, input)
	} else {
		st, err = r.poll(ctx)
	}
	if err != nil {
		return 0, err
	}
	return r.exitCodeOf(st), nil
}

// forwardSignals turns guestctl's signals into signals for the command:
// SIGTERM first, SIGKILL from the second on.
func (r *runner) forwardSignals(sigs <-chan os.Signal, stop <-chan struct{}) {
	n := 0
	for {
		select {
		case <-stop:
			return
		case <-sigs:
			n++
			sig := "TERM"
			if n > 1 {
				sig = "KILL"
			}
			select {
			case r.sigq <- sig:
			default: // enough are queued
			}
		}
	}
}

// sendSignals sends the queued signals to the command.
func (r *runner) sendSignals(ctx context.Context) {
	for {
		select {
		case sig := <-r.sigq:
			if err := r.signal(ctx, sig); err != nil {
				fmt.Fprintf(r.stderr, "guestctl: SIG%s to the command: %v\n", sig, err)
			}
		default:
			return
		}
	}
}

// signal sends SIGsig to the command: to its process group through
// guest-exec-terminate, or to the process alone by running kill(1) in a
// qemu-ga guest.
func (r *runner) signal(ctx context.Context, sig string) error {
	if r.extended {
		return r.a.call(ctx, r.o, "guest-exec-terminate", map[string]any{"pid": r.pid, "signal": sig}, nil)
	}
	r.mu.Lock()
	switch {
	case sig == "KILL" && r.killedAt.IsZero():
		r.killedAt = time.Now()
	case sig == "TERM" && r.termAt.IsZero():
		r.termAt = time.Now()
	}
	r.mu.Unlock()
	var k struct {
		Pid int64 `json:"pid"`
	}
	if err := r.a.call(ctx, r.o, "guest-exec", map[string]any{"path": "kill", "arg": []string{"-s", sig, "--", strconv.FormatInt(r.pid, 10)}}, &k); err != nil {
		return err
	}
	// Collect kill's own status, so qemu-ga does not keep it for ever.
	go func() {
		for range 50 {
			var st execStatus
			if r.a.call(ctx, r.o, "guest-exec-status", map[string]any{"pid": k.Pid}, &st) != nil || st.Exited {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	return nil
}

// readChunks reads in as it comes, one chunk at a time on the channel,
// which is closed at EOF (or error).
func readChunks(in io.Reader, stop <-chan struct{}) <-chan []byte {
	ch := make(chan []byte)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, stdinChunk)
			n, err := in.Read(buf)
			if n > 0 {
				select {
				case ch <- buf[:n]:
				case <-stop:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

// writeInput writes one chunk of stdin to the command (or closes its stdin
// for a nil chunk). false: the command takes no more input.
func (r *runner) writeInput(ctx context.Context, data []byte) bool {
	if data == nil {
		return r.a.call(ctx, r.o, "guest-exec-write", map[string]any{"pid": r.pid, "close": true}, nil) == nil
	}
	for len(data) > 0 {
		var w struct {
			Count int `json:"count"`
		}
		err := r.a.call(ctx, r.o, "guest-exec-write", map[string]any{"pid": r.pid, "input-data": base64.StdEncoding.EncodeToString(data)}, &w)
		if err != nil {
			return false // ended, or closed its stdin: nothing more to give it
		}
		data = data[w.Count:]
	}
	return true
}

// stream follows the command with guest-exec-read, writing its output as
// it arrives, until the reply that says it exited. Signals and stdin go
// between the reads.
func (r *runner) stream(ctx context.Context, input <-chan []byte) (*execStatus, error) {
	var outOff, errOff int64
	for {
		r.sendSignals(ctx)
		wait := readWait
		if input != nil {
			select {
			case chunk, ok := <-input:
				if !ok {
					r.writeInput(ctx, nil)
					input = nil
				} else if !r.writeInput(ctx, chunk) {
					input = nil
				}
				wait = 0 // more input may be there already
			default:
			}
		}
		cctx, cancel := context.WithTimeout(ctx, wait+r.o.timeout)
		ret, err := r.a.Call(cctx, "guest-exec-read", map[string]any{
			"pid": r.pid, "out-offset": outOff, "err-offset": errOff, "wait": wait.Seconds()})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("guest-exec-read: %w", err)
		}
		st := &execStatus{}
		if err := json.Unmarshal(ret, st); err != nil {
			return nil, fmt.Errorf("guest-exec-read: decode %s: %w", ret, err)
		}
		if err := r.show(st); err != nil {
			return nil, err
		}
		outOff, errOff = st.OutOffset, st.ErrOffset
		if st.Exited {
			return st, nil
		}
	}
}

// poll follows the command with guest-exec-status, every 5 ms at first and
// backing off to every 500 ms, as qemu-ga returns the output only at the
// end; a --timeout is enforced from here.
func (r *runner) poll(ctx context.Context) (*execStatus, error) {
	delay := 5 * time.Millisecond
	killed := false
	for {
		r.sendSignals(ctx)
		r.mu.Lock()
		killedAt, termAt, timedOut := r.killedAt, r.termAt, r.timedOut
		r.mu.Unlock()
		if killedAt.IsZero() && !termAt.IsZero() && time.Since(termAt) > abandonAfter {
			// What the command started may hold its output open and ignore
			// the SIGTERM that reached the command alone: escalate.
			if err := r.signal(ctx, "KILL"); err != nil {
				return nil, fmt.Errorf("SIGKILL to the command: %w", err)
			}
			continue
		}
		if !killedAt.IsZero() && time.Since(killedAt) > abandonAfter {
			fmt.Fprintf(r.stderr, "guestctl: process %d was killed, but qemu-ga does not report it exited: processes it started may hold its output and still run\n", r.pid)
			sig := int(syscall.SIGKILL)
			return &execStatus{Exited: true, Signal: &sig, TimedOut: timedOut}, nil
		}
		st := &execStatus{}
		if err := r.a.call(ctx, r.o, "guest-exec-status", map[string]any{"pid": r.pid}, st); err != nil {
			return nil, err
		}
		if st.Exited {
			r.mu.Lock()
			st.TimedOut = r.timedOut
			r.mu.Unlock()
			return st, r.show(st)
		}
		if r.f.timeout > 0 && !killed && time.Since(r.started) >= r.f.timeout {
			killed = true
			r.mu.Lock()
			r.timedOut = true
			r.mu.Unlock()
			if err := r.signal(ctx, "KILL"); err != nil {
				return nil, fmt.Errorf("time limit passed, and killing the command failed: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*3/2, 500*time.Millisecond)
	}
}

// show writes what a reply carries of each stream to guestctl's own.
func (r *runner) show(st *execStatus) error {
	for _, s := range []struct {
		data string
		w    io.Writer
	}{{st.OutData, r.stdout}, {st.ErrData, r.stderr}} {
		if s.data == "" {
			continue
		}
		b, err := base64.StdEncoding.DecodeString(s.data)
		if err != nil {
			return fmt.Errorf("output of the command: %w", err)
		}
		if _, err := s.w.Write(b); err != nil {
			return fmt.Errorf("write the command's output: %w", err)
		}
	}
	return nil
}

// exitCodeOf is the code guestctl exits with for the command's status.
func (r *runner) exitCodeOf(st *execStatus) int {
	for _, t := range []struct {
		truncated bool
		name      string
	}{{st.OutTruncated, "stdout"}, {st.ErrTruncated, "stderr"}} {
		if t.truncated {
			fmt.Fprintf(r.stderr, "guestctl: the guest dropped part of the command's %s (its output limit)\n", t.name)
		}
	}
	switch {
	case st.TimedOut:
		fmt.Fprintf(r.stderr, "guestctl: the command's time limit (%s) passed: it was killed\n", r.f.timeout)
		return exitTimedOut
	case st.Signal != nil:
		return 128 + *st.Signal
	case st.Exitcode != nil:
		return *st.Exitcode
	}
	return exitFailed
}

// defaultAllTimeout bounds each guest's command in a multi-guest exec
// without --timeout.
const defaultAllTimeout = 5 * time.Minute

// runExecAll runs the command in every guest of a multi-guest run and
// reports each one's output and status when it has ended.
func runExecAll(cmd *cobra.Command, o *options, f *execFlags, argv []string) error {
	if f.stdin {
		return errors.New("-i takes one guest: not with --all or several --domain names")
	}
	limit := f.timeout
	if limit == 0 {
		limit = defaultAllTimeout
	}
	perGuest := *o
	perGuest.timeout = limit + o.timeout
	return runOp(cmd, &perGuest, func(ctx context.Context, a *agent) (result, error) {
		if err := a.loadInfo(ctx, o); err != nil {
			return result{}, err
		}
		extended := a.serves("guest-exec-terminate")
		if !extended && (f.cwd != "" || f.user != "" || f.group != "") {
			return result{}, errors.New("--cwd, --user and --group need guest-agent: this agent (qemu-ga?) does not serve them")
		}
		args := map[string]any{"path": argv[0], "arg": argv[1:], "capture-output": true}
		if len(f.env) > 0 {
			args["env"] = withPath(f.env)
		}
		if extended {
			args["timeout"] = limit.Seconds()
			for k, v := range map[string]string{"cwd": f.cwd, "user": f.user, "group": f.group} {
				if v != "" {
					args[k] = v
				}
			}
		}
		var started struct {
			Pid int64 `json:"pid"`
		}
		if err := a.call(ctx, o, "guest-exec", args, &started); err != nil {
			return result{}, err
		}
		r := &runner{o: o, f: &execFlags{timeout: limit}, a: a, pid: started.Pid, started: time.Now(), extended: extended,
			stdout: io.Discard, stderr: io.Discard, sigq: make(chan string, 1)}
		st, err := r.poll(ctx)
		if err != nil {
			return result{}, err
		}
		stdout, _ := base64.StdEncoding.DecodeString(st.OutData)
		stderr, _ := base64.StdEncoding.DecodeString(st.ErrData)
		code := r.exitCodeOf(st)
		var text strings.Builder
		text.Write(stdout)
		for _, l := range strings.SplitAfter(string(stderr), "\n") {
			if l != "" {
				text.WriteString("stderr: " + l)
			}
		}
		if text.Len() > 0 && !strings.HasSuffix(text.String(), "\n") {
			text.WriteByte('\n')
		}
		fmt.Fprintf(&text, "exit %d\n", code)
		return result{text: text.String(), code: code,
			value: map[string]any{"exit": code, "stdout": string(stdout), "stderr": string(stderr), "timed-out": st.TimedOut}}, nil
	})
}

// withPath is env with a PATH in front unless it sets one: guest-exec's
// env replaces the whole environment.
func withPath(env []string) []string {
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			return env
		}
	}
	return append([]string{defaultPath}, env...)
}
