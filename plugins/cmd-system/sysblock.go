package main

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

// This file finds the hardware behind a block device from its sysfs path, as
// qemu-ga's build_guest_fsinfo_for_device() and friends do. qemu-ga asks
// libudev for the device node and serial number; the static plugin reads the
// same facts where udev gets them: DEVNAME from the kernel's uevent file and
// ID_SERIAL from udev's database under /run/udev/data.

type pciAddress struct {
	Domain   int64 `json:"domain"`
	Bus      int64 `json:"bus"`
	Slot     int64 `json:"slot"`
	Function int64 `json:"function"`
}

type ccwAddress struct {
	Cssid   int64 `json:"cssid"`
	Ssid    int64 `json:"ssid"`
	Subchno int64 `json:"subchno"`
	Devno   int64 `json:"devno"`
}

// diskAddress is GuestDiskAddress.
type diskAddress struct {
	PCIController pciAddress  `json:"pci-controller"`
	BusType       string      `json:"bus-type"`
	Bus           int64       `json:"bus"`
	Target        int64       `json:"target"`
	Unit          int64       `json:"unit"`
	Serial        string      `json:"serial,omitempty"`
	Dev           string      `json:"dev,omitempty"`
	CCWAddress    *ccwAddress `json:"ccw-address,omitempty"`
}

// devNode is udev's device node of a sysfs device: /dev/ + DEVNAME.
func devNode(syspath string) string {
	data, err := os.ReadFile(filepath.Join(syspath, "uevent"))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "DEVNAME="); ok && v != "" {
			return "/dev/" + v
		}
	}
	return ""
}

// udevProperty reads a property udev stored for a block device.
func (s *system) udevProperty(syspath, key string) string {
	dev, err := os.ReadFile(filepath.Join(syspath, "dev"))
	if err != nil {
		return ""
	}
	f, err := os.Open(s.rootPath("/run/udev/data/b" + strings.TrimSpace(string(dev))))
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "E:"+key+"="); ok {
			return v
		}
	}
	return ""
}

// fsDisks collects the disks a filesystem lies on, and the name of its
// device (the last path element of its sysfs directory).
type fsDisks struct {
	name  string
	disks []diskAddress // most recent first, as qemu-ga prepends
}

// forDevice dispatches on whether devpath is a virtual device (device mapper,
// md, loop: look at its slaves) or real hardware.
func (s *system) forDevice(devpath string, fs *fsDisks, depth int) error {
	syspath, err := filepath.EvalSymlinks(devpath)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return sdk.Errorf("realpath(\"%s\"): %s", devpath, strerror(err))
		}
		// The device may be missing in a container.
		if fs.name == "" {
			fs.name = filepath.Base(devpath)
		}
		return nil
	}
	if fs.name == "" {
		fs.name = filepath.Base(syspath)
	}
	if isVirtualBlock(syspath) {
		return s.forVirtualDevice(syspath, fs, depth)
	}
	s.forRealDevice(syspath, fs)
	return nil
}

func isVirtualBlock(syspath string) bool {
	return strings.Contains(syspath, "/devices/virtual/block/")
}

func (s *system) forVirtualDevice(syspath string, fs *fsDisks, depth int) error {
	if depth > 16 {
		return nil // a loop in sysfs would be a kernel bug; do not recurse forever
	}
	dir := filepath.Join(syspath, "slaves")
	entries, err := readDirUnsorted(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return sdk.Errorf("opendir(\"%s\"): %s", dir, strerror(err))
	}
	for _, e := range entries {
		if e.Type()&os.ModeSymlink == 0 {
			continue
		}
		if err := s.forDevice(filepath.Join(dir, e.Name()), fs, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// readDirUnsorted lists a directory in its own order, as readdir() does.
func readDirUnsorted(dir string) ([]os.DirEntry, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.ReadDir(-1)
}

func (s *system) forRealDevice(syspath string, fs *fsDisks) {
	disk := diskAddress{
		PCIController: pciAddress{-1, -1, -1, -1}, // -1: not known
		BusType:       "unknown",
		Dev:           devNode(syspath),
		Serial:        s.udevProperty(syspath, "ID_SERIAL"),
	}
	var hw bool
	switch {
	case strings.Contains(syspath, "/devices/pci"):
		hw = forPCIDevice(syspath, &disk)
	case strings.Contains(syspath, "/devices/css"):
		hw = forCCWDevice(syspath, &disk)
	case strings.Contains(syspath, "/virtio"):
		hw = forNonPCIVirtio(syspath, &disk)
	}
	if hw || disk.Dev != "" || disk.Serial != "" {
		fs.disks = append([]diskAddress{disk}, fs.disks...)
	}
}

// scanNum reads a %u or %x number (after optional spaces, like sscanf) and
// returns the value and the rest of s.
func scanNum(s string, base int) (int64, string, bool) {
	s = strings.TrimLeft(s, " \t\n")
	end := 0
	for end < len(s) && isDigit(s[end], base) {
		end++
	}
	if end == 0 {
		return 0, s, false
	}
	v, err := strconv.ParseInt(s[:end], base, 64)
	if err != nil {
		return 0, s, false
	}
	return v, s[end:], true
}

func isDigit(c byte, base int) bool {
	if c >= '0' && c <= '9' {
		return true
	}
	return base == 16 && ((c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))
}

// scanf matches s against a format of literal characters and %x / %u
// conversions (%*x, %*u skip a number), like sscanf: it returns the
// converted values, how many of s's bytes were used, and whether the whole
// format matched.
func scanf(s, format string) ([]int64, int, bool) {
	var vals []int64
	orig := len(s)
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' {
			if len(s) == 0 || s[0] != c {
				return vals, orig - len(s), false
			}
			s = s[1:]
			continue
		}
		i++
		skip := false
		if i < len(format) && format[i] == '*' {
			skip = true
			i++
		}
		if i >= len(format) {
			return vals, orig - len(s), false
		}
		base := 10
		if format[i] == 'x' {
			base = 16
		}
		v, rest, ok := scanNum(s, base)
		if !ok {
			return vals, orig - len(s), false
		}
		s = rest
		if !skip {
			vals = append(vals, v)
		}
	}
	return vals, orig - len(s), true
}

// pciDrivers are the storage controllers qemu-ga knows how to address.
var pciDrivers = map[string]bool{
	"ata_piix": true, "sym53c8xx": true, "virtio-pci": true, "ahci": true,
	"nvme": true, "xhci_hcd": true, "ehci-pci": true,
}

func forPCIDevice(syspath string, disk *diskAddress) bool {
	i := strings.Index(syspath, "/devices/pci")
	if i < 0 {
		return false
	}
	pci, n, ok := scanf(syspath[i+12:], "%*x:%*x/%x:%x:%x.%x")
	if !ok {
		return false
	}
	p := i + 12 + n
	var driver string
	for {
		driver = ""
		if link, err := os.Readlink(syspath[:p] + "/driver"); err == nil {
			driver = filepath.Base(link)
		}
		if pciDrivers[driver] {
			break
		}
		// A bridge: the controller is further down the path.
		next, m, ok := scanf(syspath[p:], "/%x:%x:%x.%x")
		if !ok {
			return false
		}
		pci, p = next, p+m
	}

	var tgt []int64
	if j := strings.Index(syspath, "/target"); j >= 0 {
		if v, _, ok := scanf(syspath[j+7:], "%*u:%*u:%*u/%*u:%u:%u:%u"); ok {
			tgt = v
		}
	}
	var host int64
	hasHost, ata := false, false
	var hosts []int64
	j, off := strings.Index(syspath, "/ata"), 4
	if j >= 0 {
		ata = true
	} else {
		j, off = strings.Index(syspath, "/host"), 5
	}
	if j >= 0 {
		if v, _, ok := scanNum(syspath[j+off:], 10); ok {
			host, hasHost = v, true
			hosts = listHosts(syspath[:j], ata)
		}
	}
	disk.PCIController = pciAddress{pci[0], pci[1], pci[2], pci[3]}
	hostIndex := func() (int64, bool) {
		for k, h := range hosts {
			if h == host {
				return int64(k), true
			}
		}
		return 0, false
	}
	switch driver {
	case "ata_piix":
		// A host per IDE bus, target*:0:<unit>:0.
		if !hasHost || tgt == nil {
			return false
		}
		k, ok := hostIndex()
		if !ok {
			return false
		}
		disk.BusType, disk.Bus, disk.Unit = "ide", k, tgt[1]
	case "sym53c8xx":
		if tgt == nil {
			return false
		}
		disk.BusType, disk.Unit = "scsi", tgt[1]
	case "virtio-pci":
		if tgt != nil {
			disk.BusType, disk.Unit = "scsi", tgt[2] // virtio-scsi
		} else {
			disk.BusType = "virtio" // virtio-blk: one disk per device
		}
	case "ahci":
		// One host per unit.
		if !hasHost || tgt == nil {
			return false
		}
		k, ok := hostIndex()
		if !ok {
			return false
		}
		disk.BusType, disk.Unit = "sata", k
	case "nvme":
		disk.BusType = "nvme"
	case "ehci-pci", "xhci_hcd":
		disk.BusType = "usb"
	}
	return true
}

// listHosts lists the ataN or hostN numbers of a controller, sorted: the
// position of a host in it is the bus (IDE) or unit (AHCI) number.
func listHosts(dir string, ata bool) []int64 {
	entries, err := readDirUnsorted(dir)
	if err != nil {
		return nil
	}
	prefix := "host"
	if ata {
		prefix = "ata"
	}
	var hosts []int64
	for _, e := range entries {
		if len(hosts) == 8 {
			break
		}
		if rest, ok := strings.CutPrefix(e.Name(), prefix); ok {
			if v, _, ok := scanNum(rest, 10); ok {
				hosts = append(hosts, v)
			}
		}
	}
	sort.Slice(hosts, func(a, b int) bool { return hosts[a] < hosts[b] })
	return hosts
}

func forNonPCIVirtio(syspath string, disk *diskAddress) bool {
	if !strings.Contains(syspath, "/virtio") || !strings.Contains(syspath, "/block") {
		return false
	}
	if j := strings.Index(syspath, "/target"); j >= 0 {
		if t, _, ok := scanf(syspath[j+7:], "%*u:%*u:%*u/%*u:%u:%u:%u"); ok {
			disk.BusType, disk.Bus, disk.Target, disk.Unit = "scsi", t[0], t[1], t[2]
			return true
		}
	}
	disk.BusType = "virtio"
	return true
}

func forCCWDevice(syspath string, disk *diskAddress) bool {
	i := strings.Index(syspath, "/devices/css")
	if i < 0 {
		return false
	}
	v, _, ok := scanf(syspath[i+12:], "%*x/%x.%x.%x/%*x.%*x.%x/")
	if !ok {
		return false
	}
	disk.CCWAddress = &ccwAddress{Cssid: v[0], Ssid: v[1], Subchno: v[2], Devno: v[3]}
	if strings.Contains(syspath[i:], "/virtio") {
		forNonPCIVirtio(syspath, disk)
	}
	return true
}
