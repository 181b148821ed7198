package domains

import (
	"os"
)

// Options choose a Source as guestctl's flags do.
type Options struct {
	Connect    string // --connect URI: libvirt through virsh
	SocketDir  string // --socket-dir DIR: a directory of sockets
	RuntimeDir string // libvirt's status files; empty: DefaultRuntimeDir
}

// New returns the source the options name: a socket directory when given;
// virsh for an explicit URI (--connect or LIBVIRT_DEFAULT_URI); otherwise
// libvirt's runtime directory when this process can read it (root on a
// host running libvirtd's QEMU driver: no daemon round trip, no process
// per domain), and virsh's default connection when it cannot.
func New(o Options) Source {
	switch {
	case o.SocketDir != "":
		return SocketDir{Dir: o.SocketDir}
	case o.Connect != "":
		return Virsh{Connect: o.Connect}
	case os.Getenv("LIBVIRT_DEFAULT_URI") != "":
		return Virsh{}
	}
	rd := RuntimeDir{Dir: o.RuntimeDir}
	if f, err := os.Open(rd.dir()); err == nil {
		_ = f.Close()
		return rd
	}
	return Virsh{}
}
