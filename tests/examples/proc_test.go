package examples

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// childNamed returns the pid of the agent's plugin process whose binary is
// name, 0 if none runs.
func childNamed(agentPID int, name string) int {
	for _, pid := range harness.Children(agentPID) {
		if filepath.Base(harness.Cmdline(pid)) == name && harness.Alive(pid) {
			return pid
		}
	}
	return 0
}

// threads is the Threads line of /proc/<pid>/status.
func threads(t *testing.T, pid int) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no Threads line for %d", pid)
	return 0
}

// tcpSocket is one TCP socket a process holds.
type tcpSocket struct {
	fd                    string
	localPort, remotePort int
}

// tcpSockets lists the IPv4 TCP sockets pid holds whose local port is
// port: its descriptors (/proc/<pid>/fd, "socket:[inode]") matched with
// the kernel's table (/proc/net/tcp) by inode.
func tcpSockets(t *testing.T, pid, port int) []tcpSocket {
	t.Helper()
	table, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	byInode := map[string]tcpSocket{}
	for _, line := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		local, remote := hexPort(f[1]), hexPort(f[2])
		if local == port {
			byInode[f[9]] = tcpSocket{localPort: local, remotePort: remote}
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []tcpSocket
	for _, fd := range fds {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		inode, ok := strings.CutPrefix(target, "socket:[")
		if !ok {
			continue
		}
		if s, ok := byInode[strings.TrimSuffix(inode, "]")]; ok {
			s.fd = fd.Name()
			out = append(out, s)
		}
	}
	return out
}

// hexPort is the port of a /proc/net/tcp address ("0100007F:B7A3").
func hexPort(addr string) int {
	_, p, _ := strings.Cut(addr, ":")
	n, _ := strconv.ParseUint(p, 16, 16)
	return int(n)
}

// nonBlocking tells whether pid's descriptor fd has O_NONBLOCK set, from
// the flags (octal) of /proc/<pid>/fdinfo/<fd>.
func nonBlocking(t *testing.T, pid int, fd string) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			if err != nil {
				t.Fatal(err)
			}
			return flags&syscall.O_NONBLOCK != 0
		}
	}
	t.Fatalf("no flags in fdinfo of %d/%s", pid, fd)
	return false
}
