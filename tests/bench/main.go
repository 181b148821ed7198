// Command bench measures guest-agent side by side with Debian's qemu-ga in
// the same run, on the same machine, with the same client, and prints each
// value with the ratio. Run it through `make bench`.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type agent struct {
	name          string
	cmd           *exec.Cmd
	socket        string
	monitorSocket string // the command monitor's, when it runs
	dir           string
}

func main() {
	pings := flag.Int("pings", 5000, "guest-ping calls per agent")
	fileMiB := flag.Int("file-mib", 64, "size of the file moved by the file benchmarks")
	only := flag.String("only", "", "comma-separated subset: ping,memory,start,file (= read,write),exec,badinput,guestctl,monitor,negotiator")
	chunkList := flag.String("chunks", "4,64,1024", "comma-separated chunk sizes in KiB for the file benchmarks")
	negGuests := flag.Int("negotiator-guests", 500, "simulated guests served by guestctl daemon (negotiator)")
	ctlGuests := flag.Int("guestctl-guests", 500, "simulated guests of guestctl --all ping")
	flag.Parse()
	bin := os.Getenv("GUEST_AGENT_BIN")
	if bin == "" {
		fail(errors.New("GUEST_AGENT_BIN is not set: run `make bench`"))
	}
	want := func(name string) bool { return *only == "" || strings.Contains(","+*only+",", ","+name+",") }

	fmt.Printf("guest-agent vs qemu-ga, same client, same machine (%s)\n\n", time.Now().Format(time.RFC3339))
	fmt.Printf("%-34s %14s %14s %9s\n", "measure", "guest-agent", "qemu-ga", "ratio")

	if want("start") {
		benchStart(bin)
	}
	// The command monitor runs beside the host's channel throughout: the
	// qga figures are those of an agent that serves both.
	ours := startOurs(bin, true, true)
	ref := startQemuGA()
	defer ours.stop()
	defer ref.stop()

	if want("memory") {
		time.Sleep(500 * time.Millisecond) // let start-up garbage go
		a, b := rssTree(ours.cmd.Process.Pid), rssTree(ref.cmd.Process.Pid)
		row("idle RSS, all processes (MiB)", float64(a)/1024, float64(b)/1024, "%.1f", "target ≤ 40 MiB")
	}
	if want("ping") {
		pa := pingLatencies(ours.socket, *pings)
		pb := pingLatencies(ref.socket, *pings)
		row(fmt.Sprintf("guest-ping p50 (µs, n=%d)", *pings), pct(pa, 50), pct(pb, 50), "%.1f", "target ≤ 1.5×")
		row(fmt.Sprintf("guest-ping p99 (µs, n=%d)", *pings), pct(pa, 99), pct(pb, 99), "%.1f", "target ≤ 1.5×")
	}
	var chunks []int
	for _, f := range strings.Split(*chunkList, ",") {
		kib, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || kib <= 0 {
			fail(fmt.Errorf("-chunks: %q is not a size in KiB", f))
		}
		chunks = append(chunks, kib<<10)
	}
	if want("file") || want("read") || want("write") {
		size := *fileMiB << 20
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i*7 + i>>13)
		}
		src := filepath.Join(os.TempDir(), "ga-bench-src")
		if err := os.WriteFile(src, data, 0o644); err != nil {
			fail(err)
		}
		defer os.Remove(src)
		sum := sha256.Sum256(data)
		for _, chunk := range chunks {
			if !want("file") && !want("read") {
				break
			}
			ra := fileRead(ours.socket, src, chunk, sum)
			rb := fileRead(ref.socket, src, chunk, sum)
			row(fmt.Sprintf("guest-file-read %s (MB/s)", human(chunk)), ra, rb, "%.0f", "target ≥ 3×")
		}
		for _, chunk := range chunks {
			if !want("file") && !want("write") {
				break
			}
			wa := fileWrite(ours.socket, data, chunk, sum)
			wb := fileWrite(ref.socket, data, chunk, sum)
			row(fmt.Sprintf("guest-file-write %s (MB/s)", human(chunk)), wa, wb, "%.0f", "target ≥ 3×")
		}
	}
	if want("badinput") {
		// The worst input known for a JSON streamer: a string of nothing
		// but escapes (each one a step of the scanner). CPU of every
		// process of the agent, per MiB of input.
		ca := badInputCPU(ours, 32<<20)
		cb := badInputCPU(ref, 32<<20)
		row("CPU per MiB of escapes (ms)", ca, cb, "%.1f", "32 MiB request of \\\\; lower is better")
	}
	if want("exec") {
		ea := execTrue(ours.socket, 50)
		eb := execTrue(ref.socket, 50)
		row("guest-exec /bin/true + status (ms)", ea, eb, "%.2f", "median of 50")
	}
	if want("guestctl") {
		benchCp(bin, ours, ref, *fileMiB)
		benchGuestctlAll(bin, *ctlGuests)
	}
	if want("monitor") {
		benchMonitor(bin, ours, *pings)
	}
	if want("negotiator") {
		benchNegotiator(bin, *negGuests, *pings)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func human(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

func row(name string, ours, ref float64, format, note string) {
	ratio := ours / ref
	fmt.Printf("%-34s %14s %14s %8.2f×  %s\n", name, fmt.Sprintf(format, ours), fmt.Sprintf(format, ref), ratio, note)
}

func tempDir() string {
	d, err := os.MkdirTemp("", "gab")
	if err != nil {
		fail(err)
	}
	return d
}

// startOurs runs guest-agent with the host's qga channel on a unix socket
// and, with monitor, the command monitor beside it (monitorSocket).
func startOurs(bin string, wait, monitor bool) *agent {
	dir := tempDir()
	a := &agent{name: "guest-agent", dir: dir, socket: filepath.Join(dir, "qga.sock")}
	var cfg string
	if monitor {
		a.monitorSocket = filepath.Join(dir, "commands.sock")
		cfg = fmt.Sprintf("command_monitor {\n  enabled = true\n  path = %q\n}\n", a.monitorSocket)
	}
	_ = os.WriteFile(filepath.Join(dir, "none.hcl"), []byte(cfg), 0o600)
	a.cmd = exec.Command(filepath.Join(bin, "guest-agent"), "run", "-m", "unix-listen", "-p", a.socket,
		"-t", filepath.Join(dir, "state"), "--runtime-dir", filepath.Join(dir, "run"), "-c", filepath.Join(dir, "none.hcl"))
	if os.Getenv("BENCH_AGENT_LOG") != "" {
		a.cmd.Stderr = os.Stderr
	}
	if err := a.cmd.Start(); err != nil {
		fail(err)
	}
	if wait {
		waitPing(a.socket, 20*time.Second)
		if monitor {
			waitMonitor(a.monitorSocket, 20*time.Second)
		}
	}
	return a
}

func startQemuGA() *agent {
	dir := tempDir()
	a := &agent{name: "qemu-ga", dir: dir, socket: filepath.Join(dir, "ref.sock")}
	_ = os.MkdirAll(filepath.Join(dir, "state"), 0o700)
	a.cmd = exec.Command("qemu-ga", "-m", "unix-listen", "-p", a.socket, "-t", filepath.Join(dir, "state"))
	if err := a.cmd.Start(); err != nil {
		fail(fmt.Errorf("qemu-ga (Debian package qemu-guest-agent): %w", err))
	}
	waitPing(a.socket, 10*time.Second)
	return a
}

func (a *agent) stop() {
	stopProcess(a.cmd)
	os.RemoveAll(a.dir)
}

// stopProcess sends SIGTERM and waits, with a bound: qemu-ga 7.2 can hang
// in its SIGTERM handler.
func stopProcess(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _, _ = cmd.Process.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

type client struct {
	conn net.Conn
	r    *bufio.Reader
}

func dial(socket string) (*client, error) {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return nil, err
	}
	return &client{conn: c, r: bufio.NewReaderSize(c, 4<<20)}, nil
}

func (c *client) roundTrip(req []byte) ([]byte, error) {
	if _, err := c.conn.Write(req); err != nil {
		return nil, err
	}
	line, err := c.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		full := append([]byte(nil), line...)
		for errors.Is(err, bufio.ErrBufferFull) {
			line, err = c.r.ReadSlice('\n')
			full = append(full, line...)
		}
		return full, err
	}
	return line, err
}

func waitPing(socket string, within time.Duration) time.Duration {
	start := time.Now()
	for time.Since(start) < within {
		if c, err := dial(socket); err == nil {
			_, err = c.roundTrip([]byte(`{"execute":"guest-ping"}` + "\n"))
			c.conn.Close()
			if err == nil {
				return time.Since(start)
			}
		}
		time.Sleep(time.Millisecond)
	}
	fail(fmt.Errorf("no answer on %s within %s", socket, within))
	return 0
}

func benchStart(bin string) {
	// First start: an empty state directory, every plugin launched once to
	// learn its commands. Warm start: what every later boot does.
	measure := func(fresh bool) time.Duration {
		var best time.Duration
		dir := tempDir()
		defer os.RemoveAll(dir)
		for i := 0; i < 5; i++ {
			if fresh {
				os.RemoveAll(filepath.Join(dir, "state"))
			}
			sock := filepath.Join(dir, "qga.sock")
			_ = os.WriteFile(filepath.Join(dir, "none.hcl"), nil, 0o600)
			cmd := exec.Command(filepath.Join(bin, "guest-agent"), "run", "-m", "unix-listen", "-p", sock,
				"-t", filepath.Join(dir, "state"), "--runtime-dir", filepath.Join(dir, "run"), "-c", filepath.Join(dir, "none.hcl"))
			start := time.Now()
			if err := cmd.Start(); err != nil {
				fail(err)
			}
			waitPing(sock, 20*time.Second)
			d := time.Since(start)
			if best == 0 || d < best {
				best = d
			}
			stopProcess(cmd)
		}
		return best
	}
	refStart := func() time.Duration {
		var best time.Duration
		for i := 0; i < 5; i++ {
			dir := tempDir()
			sock := filepath.Join(dir, "ref.sock")
			_ = os.MkdirAll(filepath.Join(dir, "state"), 0o700)
			cmd := exec.Command("qemu-ga", "-m", "unix-listen", "-p", sock, "-t", filepath.Join(dir, "state"))
			start := time.Now()
			if err := cmd.Start(); err != nil {
				fail(err)
			}
			waitPing(sock, 10*time.Second)
			d := time.Since(start)
			if best == 0 || d < best {
				best = d
			}
			stopProcess(cmd)
			os.RemoveAll(dir)
		}
		return best
	}
	ref := refStart()
	row("start to first ping, warm (ms)", ms(measure(false)), ms(ref), "%.1f", "target < 250 ms")
	row("start to first ping, first boot (ms)", ms(measure(true)), ms(ref), "%.1f", "empty state dir")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func pingLatencies(socket string, n int) []float64 {
	c, err := dial(socket)
	if err != nil {
		fail(err)
	}
	defer c.conn.Close()
	req := []byte(`{"execute":"guest-ping"}` + "\n")
	for i := 0; i < 200; i++ { // warm-up
		if _, err := c.roundTrip(req); err != nil {
			fail(err)
		}
	}
	out := make([]float64, n)
	for i := range out {
		start := time.Now()
		line, err := c.roundTrip(req)
		if err != nil || !bytes.HasPrefix(line, []byte(`{"return": {}`)) {
			fail(fmt.Errorf("ping: %q %v", line, err))
		}
		out[i] = float64(time.Since(start).Nanoseconds()) / 1000
	}
	return out
}

func pct(v []float64, p int) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[(len(s)-1)*p/100]
}

// rssTree sums VmRSS (KiB) of pid and all its descendants.
func rssTree(pid int) int {
	total := rssOf(pid)
	for _, child := range childrenOf(pid) {
		total += rssTree(child)
	}
	return total
}

func rssOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

func childrenOf(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			out = append(out, n)
		}
	}
	return out
}

// call sends a request and returns the raw "return" member, or an error.
func call(c *client, req string) ([]byte, error) {
	line, err := c.roundTrip([]byte(req + "\n"))
	if err != nil {
		return nil, err
	}
	if bytes.HasPrefix(line, []byte(`{"error"`)) {
		return nil, fmt.Errorf("agent error: %s", line)
	}
	return line, nil
}

func intMember(line []byte, name string) (int64, error) {
	key := []byte(`"` + name + `": `)
	i := bytes.Index(line, key)
	if i < 0 {
		key = []byte(`"` + name + `":`)
		i = bytes.Index(line, key)
	}
	if i < 0 {
		return 0, fmt.Errorf("no %s in %.200q", name, line)
	}
	rest := line[i+len(key):]
	j := 0
	for j < len(rest) && (rest[j] == '-' || (rest[j] >= '0' && rest[j] <= '9')) {
		j++
	}
	return strconv.ParseInt(string(rest[:j]), 10, 64)
}

func openFile(c *client, path, mode string) int64 {
	line, err := call(c, fmt.Sprintf(`{"execute":"guest-file-open","arguments":{"path":%q,"mode":%q}}`, path, mode))
	if err != nil {
		fail(err)
	}
	h, err := intMember(line, "return")
	if err != nil {
		fail(err)
	}
	return h
}

func closeFile(c *client, h int64) {
	if _, err := call(c, fmt.Sprintf(`{"execute":"guest-file-close","arguments":{"handle":%d}}`, h)); err != nil {
		fail(err)
	}
}

// fileRead reads path in chunks and returns MB/s, verifying the checksum.
func fileRead(socket, path string, chunk int, want [32]byte) float64 {
	c, err := dial(socket)
	if err != nil {
		fail(err)
	}
	defer c.conn.Close()
	h := openFile(c, path, "r")
	hash := sha256.New()
	buf := make([]byte, chunk)
	req := fmt.Sprintf(`{"execute":"guest-file-read","arguments":{"handle":%d,"count":%d}}`, h, chunk)
	total := 0
	start := time.Now()
	for {
		line, err := call(c, req)
		if err != nil {
			fail(err)
		}
		key := []byte(`"buf-b64": "`)
		i := bytes.Index(line, key)
		if i < 0 {
			key = []byte(`"buf-b64":"`)
			i = bytes.Index(line, key)
		}
		if i < 0 {
			fail(fmt.Errorf("no buf-b64 in %.200q", line))
		}
		rest := line[i+len(key):]
		j := bytes.IndexByte(rest, '"')
		n, err := base64.StdEncoding.Decode(buf, rest[:j])
		if err != nil {
			fail(err)
		}
		hash.Write(buf[:n])
		total += n
		if bytes.Contains(line, []byte(`"eof": true`)) || bytes.Contains(line, []byte(`"eof":true`)) || n == 0 {
			break
		}
	}
	el := time.Since(start)
	closeFile(c, h)
	if !bytes.Equal(hash.Sum(nil), want[:]) {
		fail(fmt.Errorf("read %d bytes with chunk %d: checksum mismatch", total, chunk))
	}
	return float64(total) / 1e6 / el.Seconds()
}

// fileWrite writes data in chunks to a new file, returns MB/s and verifies
// the file's checksum afterwards.
func fileWrite(socket string, data []byte, chunk int, want [32]byte) float64 {
	c, err := dial(socket)
	if err != nil {
		fail(err)
	}
	defer c.conn.Close()
	dst := filepath.Join(os.TempDir(), fmt.Sprintf("ga-bench-dst-%d", time.Now().UnixNano()))
	defer os.Remove(dst)
	h := openFile(c, dst, "w")
	enc := make([]byte, base64.StdEncoding.EncodedLen(chunk))
	prefix := fmt.Sprintf(`{"execute":"guest-file-write","arguments":{"handle":%d,"buf-b64":"`, h)
	req := make([]byte, 0, len(prefix)+len(enc)+8)
	start := time.Now()
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		n := base64.StdEncoding.EncodedLen(end - off)
		base64.StdEncoding.Encode(enc[:n], data[off:end])
		req = append(append(append(req[:0], prefix...), enc[:n]...), "\"}}\n"...)
		line, err := c.roundTrip(req)
		if err != nil || bytes.HasPrefix(line, []byte(`{"error"`)) {
			fail(fmt.Errorf("write: %q %v", line, err))
		}
	}
	el := time.Since(start)
	closeFile(c, h)
	got, err := os.ReadFile(dst)
	if err != nil {
		fail(err)
	}
	if sha256.Sum256(got) != want {
		fail(fmt.Errorf("write chunk %d: checksum mismatch (%d bytes)", chunk, len(got)))
	}
	return float64(len(data)) / 1e6 / el.Seconds()
}

func execTrue(socket string, n int) float64 {
	c, err := dial(socket)
	if err != nil {
		fail(err)
	}
	defer c.conn.Close()
	var times []float64
	for i := 0; i < n; i++ {
		start := time.Now()
		line, err := call(c, `{"execute":"guest-exec","arguments":{"path":"/bin/true","capture-output":true}}`)
		if err != nil {
			fail(err)
		}
		var r struct {
			Return struct {
				PID int `json:"pid"`
			} `json:"return"`
		}
		if err := json.Unmarshal(line, &r); err != nil {
			fail(err)
		}
		for {
			line, err := call(c, fmt.Sprintf(`{"execute":"guest-exec-status","arguments":{"pid":%d}}`, r.Return.PID))
			if err != nil {
				fail(err)
			}
			if bytes.Contains(line, []byte(`"exited": true`)) || bytes.Contains(line, []byte(`"exited":true`)) {
				break
			}
			time.Sleep(200 * time.Microsecond)
		}
		times = append(times, float64(time.Since(start).Microseconds())/1000)
	}
	return pct(times, 50)
}

// badInputCPU sends one request whose string is size bytes of escapes and
// returns the CPU the agent's processes spent on it, per MiB.
func badInputCPU(a *agent, size int) float64 {
	c, err := dial(a.socket)
	if err != nil {
		fail(err)
	}
	defer c.conn.Close()
	req := []byte(`{"execute":"guest-ping","arguments":{"x":"` + strings.Repeat(`\\`, size/2) + `"}}` + "\n")
	before := cpuTree(a.cmd.Process.Pid)
	if _, err := c.roundTrip(req); err != nil {
		fail(fmt.Errorf("bad input: %w", err))
	}
	used := cpuTree(a.cmd.Process.Pid) - before
	return ms(used) / float64(size>>20)
}

// cpuTree is the user+system CPU time of pid and its descendants.
func cpuTree(pid int) time.Duration {
	total := cpuOf(pid)
	for _, child := range childrenOf(pid) {
		total += cpuTree(child)
	}
	return total
}

func cpuOf(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}
