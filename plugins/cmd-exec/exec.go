package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/hashicorp/go-hclog"
)

// execCommands are guest-exec and guest-exec-status (qga/commands.c).
func execCommands(ex *execer) []sdk.Command {
	return []sdk.Command{
		{
			Name:        "guest-exec",
			Description: "Execute a command in the guest; returns its pid for guest-exec-status.",
			ArgsSchema: `{"type":"object","required":["path"],"additionalProperties":false,"properties":{` +
				`"path":{"type":"string"},"arg":{"type":"array","items":{"type":"string"}},` +
				`"env":{"type":"array","items":{"type":"string"}},"input-data":{"type":"string","contentEncoding":"base64"},` +
				`"capture-output":{"oneOf":[{"type":"boolean"},{"enum":["none","stdout","stderr","separated","merged"]}]},` +
				// Beyond qemu-ga (extras.go).
				`"timeout":{"type":"number","exclusiveMinimum":0},"cwd":{"type":"string"},` +
				`"user":{"type":"string"},"group":{"type":"string"},"input-pipe":{"type":"boolean"}}}`,
			Handler: ex.handleExec,
		},
		{
			Name:        "guest-exec-status",
			Description: "Check the status of a process started by guest-exec; an exited status is returned once.",
			ArgsSchema:  `{"type":"object","required":["pid"],"additionalProperties":false,"properties":{"pid":{"type":"integer"}}}`,
			Handler:     ex.handleStatus,
		},
	}
}

// captureMode is qemu-ga's GuestExecCaptureOutputMode.
type captureMode int

const (
	captureNone captureMode = iota
	captureStdout
	captureStderr
	captureSeparated
	captureMerged
)

var captureModes = map[string]captureMode{
	"none":      captureNone,
	"stdout":    captureStdout,
	"stderr":    captureStderr,
	"separated": captureSeparated,
	"merged":    captureMerged,
}

// captureOutput is the GuestExecCaptureOutput alternate: true means
// "separated", false "none", or one of the modes by name.
type captureOutput struct{ mode captureMode }

func (c *captureOutput) UnmarshalJSON(b []byte) error {
	var flag bool
	if err := json.Unmarshal(b, &flag); err == nil {
		c.mode = captureNone
		if flag {
			c.mode = captureSeparated
		}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		m, ok := captureModes[s]
		if !ok {
			return sdk.Errorf("Parameter 'capture-output' does not accept value '%s'", s)
		}
		c.mode = m
		return nil
	}
	return sdk.Errorf("Invalid parameter type for 'capture-output', expected: GuestExecCaptureOutput")
}

type execArgs struct {
	Path          string          `json:"path"`
	Arg           json.RawMessage `json:"arg"`
	Env           json.RawMessage `json:"env"`
	InputData     *string         `json:"input-data"`
	CaptureOutput *captureOutput  `json:"capture-output"`
	// Beyond qemu-ga (extras.go); flat, as the SDK's decoder reads fields.
	Timeout   *float64 `json:"timeout"`
	Cwd       *string  `json:"cwd"`
	User      *string  `json:"user"`
	Group     *string  `json:"group"`
	InputPipe *bool    `json:"input-pipe"`
}

// execRequest is a validated guest-exec.
type execRequest struct {
	path     string   // as the host gave it (argv[0], error texts)
	resolved string   // what is executed, after the PATH lookup
	argv     []string // path, then arg
	env      []string // nil: the plugin's own environment, as qemu-ga
	input    []byte
	hasInput bool
	mode     captureMode
	extras   // time limit, working directory, user, stdin pipe
}

// record is one process started by guest-exec, until its exited status has
// been returned or its retention time has passed.
type record struct {
	pid      int64
	out, err *capture // nil when the stream is not captured
	done     chan struct{}

	// Set under execer.mu by finish.
	finished bool
	status   syscall.WaitStatus
	waitErr  error
	expire   *time.Timer

	closeStdin func()
	// stdin is the open input pipe of an input-pipe exec, for
	// guest-exec-write; nil otherwise. stdinMu orders the writes.
	stdinMu sync.Mutex
	stdin   *os.File
	// limit kills the process group when the time limit passes; timedOut
	// (under execer.mu) says it did.
	limit    *time.Timer
	timedOut bool
}

// execer owns every child of the plugin.
type execer struct {
	mu      sync.Mutex
	log     hclog.Logger
	opts    options
	allowed allowedPrograms // nil: any program
	env     *envPolicy      // nil: any environment
	procs   map[int64]*record
	running int // children holding a max_concurrent slot
	closing bool
	// starting counts execs between their slot and their record, so that
	// shutdown sees every child.
	starting sync.WaitGroup
	// testHookChecked runs between the allowed_paths check and the exec.
	testHookChecked func()
}

func newExecer(log hclog.Logger, opts options) *execer {
	e := &execer{log: log, procs: map[int64]*record{}}
	e.setOptions(opts)
	return e
}

func (e *execer) setOptions(opts options) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.opts = opts
	e.allowed, e.env = nil, nil
	if len(opts.AllowedPaths) > 0 {
		e.allowed = newAllowedPrograms(opts.AllowedPaths)
	}
	if opts.AllowedEnv != nil {
		e.env = newEnvPolicy(*opts.AllowedEnv)
	}
}

func (e *execer) options() options {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.opts
}

func (e *execer) handleExec(_ context.Context, call *sdk.Call) (any, error) {
	var a execArgs
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	req := execRequest{path: a.Path, mode: captureNone}
	args, err := decodeStrList("arg", a.Arg)
	if err != nil {
		return nil, err
	}
	req.argv = append([]string{a.Path}, args...)
	if a.Env != nil {
		if req.env, err = decodeStrList("env", a.Env); err != nil {
			return nil, err
		}
	}
	if a.CaptureOutput != nil {
		req.mode = a.CaptureOutput.mode
	}
	x := extraArgs{Timeout: a.Timeout, Cwd: a.Cwd, User: a.User, Group: a.Group, InputPipe: a.InputPipe}
	if req.extras, err = x.validate(); err != nil {
		return nil, err
	}
	if a.InputData != nil {
		if req.input, err = qemuBase64Decode(*a.InputData); err != nil {
			return nil, err
		}
		req.hasInput = true
	} else if call.Blob != nil {
		// A parser that decodes input-data itself hands the bytes over.
		req.input, req.hasInput = call.Blob, true
	}
	pid, err := e.start(&req)
	if err != nil {
		return nil, err
	}
	return map[string]int64{"pid": pid}, nil
}

// decodeStrList decodes a ['str'] member with QAPI's error texts.
func decodeStrList(name string, raw json.RawMessage) ([]string, error) {
	if raw == nil {
		return nil, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, sdk.Errorf("Invalid parameter type for '%s', expected: array", name)
	}
	out := make([]string, len(items))
	for i, it := range items {
		if err := json.Unmarshal(it, &out[i]); err != nil || string(it) == "null" {
			return nil, sdk.Errorf("Invalid parameter type for '%s[%d]', expected: string", name, i)
		}
	}
	return out, nil
}

// qemuBase64Decode decodes like QEMU's qbase64_decode: only base64
// characters, '=' and newlines are accepted, and glib's decoder is lenient
// about padding.
func qemuBase64Decode(s string) ([]byte, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return nil, sdk.Errorf("Base64 data contains embedded NUL characters")
	}
	clean := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '+', c == '/':
			clean = append(clean, c)
		case c == '=' || c == '\n':
		default:
			return nil, sdk.Errorf("Base64 data contains invalid characters")
		}
	}
	// A single sextet left over carries no whole byte: glib drops it.
	if len(clean)%4 == 1 {
		clean = clean[:len(clean)-1]
	}
	// RawStdEncoding is not strict: like glib, it ignores the unused low
	// bits of the last character.
	out, err := base64.RawStdEncoding.DecodeString(string(clean))
	if err != nil {
		return nil, sdk.Errorf("Base64 data contains invalid characters")
	}
	return out, nil
}

// resolve finds the executable the way glib's G_SPAWN_SEARCH_PATH does: a
// path with a slash is used as it is, a bare name is looked up in the
// plugin's PATH.
func resolve(path string) (string, error) {
	if path == "" {
		return "", syscall.ENOENT
	}
	if strings.Contains(path, "/") {
		return path, nil
	}
	p, err := exec.LookPath(path)
	if err != nil && !errors.Is(err, exec.ErrDot) {
		return "", syscall.ENOENT
	}
	return p, nil
}

// spawnError is qemu-ga's text for a failed g_spawn (current QEMU drops the
// "Guest agent command failed" prefix that Debian's 7.2 still has).
func spawnError(path string, err error) error {
	var errno syscall.Errno
	msg := err.Error()
	if errors.As(err, &errno) {
		msg = errno.Error()
	}
	if msg != "" {
		msg = strings.ToUpper(msg[:1]) + msg[1:]
	}
	return sdk.Errorf("Failed to execute child process “%s” (%s)", path, msg)
}

// start runs one guest-exec and returns its pid.
func (e *execer) start(req *execRequest) (int64, error) {
	resolved, rerr := resolve(req.path)
	e.mu.Lock()
	allowed, env, closing := e.allowed, e.env, e.closing
	e.mu.Unlock()
	if closing {
		return 0, sdk.Errorf("guest-exec refused: cmd-exec is shutting down")
	}
	var prog *checkedProgram
	if allowed != nil {
		if rerr != nil {
			e.log.Warn("guest-exec refused by allowed_paths", "path", req.path, "why", "not found")
			return 0, sdk.Errorf("guest-exec of '%s' refused: not in the allowed_paths of cmd-exec", req.path)
		}
		var err error
		if prog, err = allowed.check(resolved); err != nil {
			if _, ok := err.(errNotAllowed); !ok {
				e.log.Error("guest-exec: allowed_paths check failed", "path", req.path, "error", err)
				return 0, sdk.Errorf("guest-exec of '%s' refused: %v", req.path, err)
			}
			e.log.Warn("guest-exec refused by allowed_paths", "path", req.path, "why", err.Error())
			return 0, sdk.Errorf("guest-exec of '%s' refused: not in the allowed_paths of cmd-exec", req.path)
		}
		defer prog.close()
	} else if rerr != nil {
		return 0, spawnError(req.path, rerr)
	}
	if err := e.checkUser(req); err != nil {
		return 0, err
	}
	if env != nil && req.env != nil {
		if why := env.check(req.env); why != "" {
			e.log.Warn("guest-exec refused by allowed_env", "path", req.path, "why", why)
			return 0, sdk.Errorf("guest-exec of '%s' refused: %s", req.path, why)
		}
	}
	req.resolved = resolved
	if prog != nil {
		req.resolved = prog.execPath
	}
	if e.testHookChecked != nil {
		e.testHookChecked()
	}

	e.mu.Lock()
	opts := e.opts
	switch {
	case e.closing:
		e.mu.Unlock()
		return 0, sdk.Errorf("guest-exec refused: cmd-exec is shutting down")
	case e.running >= opts.MaxConcurrent:
		n := e.running
		e.mu.Unlock()
		return 0, sdk.Errorf("guest-exec refused: %d commands are already running (max_concurrent is %d)", n, opts.MaxConcurrent)
	}
	e.running++
	e.starting.Add(1)
	e.mu.Unlock()

	rec, err := e.spawn(req, opts)
	e.starting.Done()
	if err != nil {
		e.mu.Lock()
		e.running--
		e.mu.Unlock()
		return 0, err
	}
	if prog != nil {
		e.log.Debug("guest-exec of an allowed path", "pid", rec.pid, "path", req.path, "real", prog.realPath)
	}
	return rec.pid, nil
}

// pipes are the parent's ends of a child's standard streams.
type pipes struct {
	stdin, out, err *os.File
}

func (p *pipes) close() {
	for _, f := range []*os.File{p.stdin, p.out, p.err} {
		if f != nil {
			f.Close()
		}
	}
}

// spawn starts the child with its streams and the goroutines that feed,
// drain and reap it.
func (e *execer) spawn(req *execRequest, opts options) (*record, error) {
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("guest-exec: open %s: %w", os.DevNull, err)
	}
	// Streams that are not captured go to /dev/null, never into the
	// plugin's stdout/stderr, which carry go-plugin's handshake and logs.
	files := []*os.File{devnull, devnull, devnull}
	childEnds := []*os.File{devnull}
	var ours pipes
	fail := func(err error) (*record, error) {
		for _, f := range childEnds {
			f.Close()
		}
		ours.close()
		return nil, err
	}
	newPipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("guest-exec: pipe: %w", err)
		}
		return r, w, nil
	}
	if req.hasInput || req.inputPipe {
		r, w, err := newPipe()
		if err != nil {
			return fail(err)
		}
		files[0], ours.stdin = r, w
		childEnds = append(childEnds, r)
	}
	switch req.mode {
	case captureStdout, captureSeparated, captureMerged:
		r, w, err := newPipe()
		if err != nil {
			return fail(err)
		}
		files[1], ours.out = w, r
		childEnds = append(childEnds, w)
	}
	switch req.mode {
	case captureStderr, captureSeparated:
		r, w, err := newPipe()
		if err != nil {
			return fail(err)
		}
		files[2], ours.err = w, r
		childEnds = append(childEnds, w)
	case captureMerged:
		files[2] = files[1]
	}
	// Own process group: a signal meant for the plugin (or its group) does
	// not reach the guest's command, and the whole command can be signalled
	// as one.
	sys := &syscall.SysProcAttr{Setpgid: true, Credential: req.cred}
	if opts.KillOnExit {
		sys.Pdeathsig = syscall.SIGKILL
	}
	dir := "/"
	if req.cwd != "" {
		dir = req.cwd
	}
	proc, err := os.StartProcess(req.resolved, req.argv, &os.ProcAttr{
		Dir:   dir,
		Env:   req.childEnv(),
		Files: files,
		Sys:   sys,
	})
	if err != nil {
		return fail(spawnError(req.path, err))
	}
	for _, f := range childEnds {
		f.Close()
	}

	rec := &record{pid: int64(proc.Pid), done: make(chan struct{})}
	var drained sync.WaitGroup
	if ours.out != nil {
		rec.out = newCapture(opts.MaxOutputBytes, time.Duration(opts.StreamIdle))
		drained.Add(1)
		go func() { defer drained.Done(); rec.out.drain(ours.out) }()
	}
	if ours.err != nil {
		rec.err = newCapture(opts.MaxOutputBytes, time.Duration(opts.StreamIdle))
		drained.Add(1)
		go func() { defer drained.Done(); rec.err.drain(ours.err) }()
	}
	rec.closeStdin = func() {}
	if ours.stdin != nil && req.inputPipe {
		// Kept open for guest-exec-write; input-data, if any, goes first.
		var once sync.Once
		rec.stdin = ours.stdin
		rec.closeStdin = func() { once.Do(func() { rec.stdinMu.Lock(); ours.stdin.Close(); rec.stdinMu.Unlock() }) }
		if len(req.input) > 0 {
			rec.stdinMu.Lock()
			go func() {
				defer rec.stdinMu.Unlock()
				_, _ = ours.stdin.Write(req.input)
			}()
		}
	} else if ours.stdin != nil {
		var once sync.Once
		rec.closeStdin = func() { once.Do(func() { ours.stdin.Close() }) }
		go func() {
			// A child that exits without reading its input makes this
			// fail with EPIPE, which is not an error of the command.
			_, _ = ours.stdin.Write(req.input)
			rec.closeStdin()
		}()
	}

	e.mu.Lock()
	if old := e.procs[rec.pid]; old != nil {
		// The pid of an unclaimed finished record was reused.
		if old.expire != nil {
			old.expire.Stop()
		}
		e.log.Debug("dropping the unclaimed status of a reused pid", "pid", rec.pid)
	}
	e.procs[rec.pid] = rec
	if req.timeout > 0 {
		rec.limit = time.AfterFunc(req.timeout, func() { e.timeUp(rec) })
	}
	e.mu.Unlock()
	e.log.Info("guest-exec started", "pid", rec.pid, "path", req.path, "args", len(req.argv)-1)

	go func() {
		st, werr := proc.Wait() // reaps: no zombie outlives this goroutine
		// qemu-ga reports "exited" only once the captured streams are
		// closed too, so that the output is complete.
		drained.Wait()
		e.finish(rec, st, werr)
	}()
	return rec, nil
}

// finish marks the record exited and starts its retention clock.
func (e *execer) finish(rec *record, st *os.ProcessState, werr error) {
	e.mu.Lock()
	rec.finished = true
	rec.waitErr = werr
	if st != nil {
		rec.status, _ = st.Sys().(syscall.WaitStatus)
	}
	e.running--
	if rec.limit != nil {
		rec.limit.Stop()
	}
	if e.procs[rec.pid] == rec {
		rec.expire = time.AfterFunc(time.Duration(e.opts.StatusRetention), func() { e.forget(rec) })
	}
	e.mu.Unlock()
	rec.closeStdin()
	close(rec.done)
	if werr != nil {
		e.log.Error("guest-exec: wait failed", "pid", rec.pid, "error", werr)
	} else {
		e.log.Debug("guest-exec finished", "pid", rec.pid, "status", st.String())
	}
}

// forget frees a finished record nobody asked for.
func (e *execer) forget(rec *record) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.procs[rec.pid] == rec {
		delete(e.procs, rec.pid)
		e.log.Debug("guest-exec status expired unclaimed", "pid", rec.pid)
	}
}

// execStatus is GuestExecStatus, members in the schema's order.
type execStatus struct {
	Exited       bool    `json:"exited"`
	Exitcode     *int    `json:"exitcode,omitempty"`
	Signal       *int    `json:"signal,omitempty"`
	OutData      *string `json:"out-data,omitempty"`
	ErrData      *string `json:"err-data,omitempty"`
	OutTruncated *bool   `json:"out-truncated,omitempty"`
	ErrTruncated *bool   `json:"err-truncated,omitempty"`
	// Beyond qemu-ga: the time limit of guest-exec killed it.
	TimedOut *bool `json:"timed-out,omitempty"`
}

func (e *execer) handleStatus(_ context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Pid int64 `json:"pid"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	return e.status(a.Pid)
}

// status is guest-exec-status: the record is freed once it has reported
// exited, as qemu-ga does.
func (e *execer) status(pid int64) (*execStatus, error) {
	e.mu.Lock()
	rec := e.procs[pid]
	if rec == nil {
		e.mu.Unlock()
		return nil, sdk.Errorf("Invalid parameter 'pid'")
	}
	if !rec.finished {
		e.mu.Unlock()
		return &execStatus{Exited: false}, nil
	}
	delete(e.procs, pid)
	if rec.expire != nil {
		rec.expire.Stop()
	}
	e.mu.Unlock()

	st := &execStatus{Exited: true}
	rec.exitStatus(st)
	// As current QEMU: data and its truncation flag appear together, and
	// only when something was captured (and, beyond qemu-ga, not yet taken
	// by guest-exec-read).
	if rec.out != nil {
		if buf, trunc := rec.out.held(); len(buf) > 0 {
			d := base64.StdEncoding.EncodeToString(buf)
			st.OutData, st.OutTruncated = &d, &trunc
		}
	}
	if rec.err != nil {
		if buf, trunc := rec.err.held(); len(buf) > 0 {
			d := base64.StdEncoding.EncodeToString(buf)
			st.ErrData, st.ErrTruncated = &d, &trunc
		}
	}
	return st, nil
}

// stopFlowControl lets the output of a command being killed drain.
func (rec *record) stopFlowControl() {
	for _, c := range []*capture{rec.out, rec.err} {
		if c != nil {
			c.stopFlowControl()
		}
	}
}

// exitStatus fills in how a finished process ended.
func (rec *record) exitStatus(st *execStatus) {
	if rec.waitErr == nil {
		switch {
		case rec.status.Exited():
			c := rec.status.ExitStatus()
			st.Exitcode = &c
		case rec.status.Signaled():
			s := int(rec.status.Signal())
			st.Signal = &s
		}
	}
	if rec.timedOut {
		t := true
		st.TimedOut = &t
	}
}

// killGrace is how long children get between SIGTERM and SIGKILL when the
// plugin stops with kill_on_exit.
const killGrace = 2 * time.Second

// shutdown refuses new execs and, with kill_on_exit, terminates the process
// group of every running child and waits for it to be reaped. Without it the
// children are left running, reparented to init (or the nearest subreaper),
// which reaps them.
func (e *execer) shutdown() {
	e.mu.Lock()
	e.closing = true
	e.mu.Unlock()
	e.starting.Wait()
	e.mu.Lock()
	opts := e.opts
	var live []*record
	for _, rec := range e.procs {
		if !rec.finished {
			live = append(live, rec)
		}
	}
	e.mu.Unlock()
	if len(live) == 0 {
		return
	}
	if !opts.KillOnExit {
		e.log.Info("stopping; guest-exec children keep running, as with qemu-ga (kill_on_exit is off)", "children", len(live))
		return
	}
	e.log.Info("stopping; terminating guest-exec children", "children", len(live))
	signalGroups(live, syscall.SIGTERM)
	if waitAll(live, killGrace) {
		return
	}
	signalGroups(live, syscall.SIGKILL)
	if !waitAll(live, killGrace) {
		e.log.Warn("guest-exec children still not reaped after SIGKILL (a grandchild holding an output pipe in another process group?)")
	}
}

func signalGroups(recs []*record, sig syscall.Signal) {
	for _, rec := range recs {
		select {
		case <-rec.done:
		default:
			_ = syscall.Kill(-int(rec.pid), sig)
		}
	}
}

func waitAll(recs []*record, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for _, rec := range recs {
		select {
		case <-rec.done:
		case <-t.C:
			return false
		}
	}
	return true
}

// busy keeps the plugin from leaving while idle (sdk.CommandPlugin.Busy)
// as long as a child runs or a status has not been collected: the host's
// guest-exec-status must find it.
func (e *execer) busy() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n := len(e.procs); n > 0 {
		return fmt.Sprintf("%d processes running or with a status not yet collected", n)
	}
	return ""
}
