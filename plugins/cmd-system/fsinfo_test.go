package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

type fsInfoJSON struct {
	Name                 string        `json:"name"`
	Mountpoint           string        `json:"mountpoint"`
	Type                 string        `json:"type"`
	UsedBytes            *uint64       `json:"used-bytes"`
	TotalBytes           *uint64       `json:"total-bytes"`
	TotalBytesPrivileged *uint64       `json:"total-bytes-privileged"`
	Disk                 []diskAddress `json:"disk"`
}

var busTypes = map[string]bool{"ide": true, "fdc": true, "scsi": true, "virtio": true, "xen": true, "usb": true,
	"uml": true, "sata": true, "sd": true, "unknown": true, "ieee1394": true, "ssa": true, "fibre": true, "raid": true,
	"iscsi": true, "sas": true, "mmc": true, "virtual": true, "file-backed-virtual": true, "nvme": true}

func TestGetFSInfoOfThisMachine(t *testing.T) {
	fs := mountTestFS(t)
	tp := newTestPlugin(t, nil)
	var list []fsInfoJSON
	resp := tp.ok("guest-get-fsinfo", "", &list)
	if !strings.Contains(string(resp.ResultJson), `"disk":[`) {
		t.Errorf("disk must always be present: %s", resp.ResultJson)
	}
	var ours *fsInfoJSON
	for i := range list {
		fi := &list[i]
		if fi.Mountpoint == fs.mnt {
			ours = fi
		}
		for _, d := range fi.Disk {
			if !busTypes[d.BusType] {
				t.Errorf("%s: bus-type %q", fi.Mountpoint, d.BusType)
			}
		}
		if fi.Name == "" || fi.Type == "" {
			t.Errorf("entry %+v", fi)
		}
	}
	if ours == nil {
		t.Fatalf("test filesystem %s not listed in %+v", fs.mnt, list)
	}
	// The last mounted filesystem comes first, as qemu-ga prepends: ours
	// before the root filesystem.
	for i := range list {
		if list[i].Mountpoint == "/" && ours != nil && i < indexOf(list, fs.mnt) {
			t.Errorf("/ listed before the newer %s", fs.mnt)
		}
	}
	if ours.Type != "ext4" {
		t.Errorf("type %q", ours.Type)
	}
	loopName, err := os.Readlink(fmt.Sprintf("/sys/dev/block/%d:%d", fs.major, fs.minor))
	if err != nil {
		t.Fatal(err)
	}
	if ours.Name != filepath.Base(loopName) || !strings.HasPrefix(ours.Name, "loop") {
		t.Errorf("name %q, sysfs says %s", ours.Name, loopName)
	}
	if len(ours.Disk) != 0 {
		t.Errorf("a loop device has no disk hardware: %+v", ours.Disk)
	}
	// The test filesystem is quiet: df(1) must agree to the byte.
	out, err := exec.Command("df", "-B1", "--output=used,avail,size", fs.mnt).Output()
	if err != nil {
		t.Skipf("df: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	f := strings.Fields(lines[len(lines)-1])
	used, _ := strconv.ParseUint(f[0], 10, 64)
	avail, _ := strconv.ParseUint(f[1], 10, 64)
	size, _ := strconv.ParseUint(f[2], 10, 64)
	if ours.UsedBytes == nil || ours.TotalBytes == nil || ours.TotalBytesPrivileged == nil {
		t.Fatalf("usage missing: %+v", ours)
	}
	if *ours.UsedBytes != used || *ours.TotalBytes != used+avail || *ours.TotalBytesPrivileged != size {
		t.Errorf("used %d total %d privileged %d; df says used %d avail %d size %d",
			*ours.UsedBytes, *ours.TotalBytes, *ours.TotalBytesPrivileged, used, avail, size)
	}
	if *ours.TotalBytes >= *ours.TotalBytesPrivileged {
		t.Errorf("ext4 reserves blocks for root: total %d, privileged %d", *ours.TotalBytes, *ours.TotalBytesPrivileged)
	}
}

func indexOf(list []fsInfoJSON, mnt string) int {
	for i := range list {
		if list[i].Mountpoint == mnt {
			return i
		}
	}
	return -1
}

// nonEmptyBlockDevices lists /sys/block entries of non-zero size.
func nonEmptyBlockDevices(t *testing.T) map[string]bool {
	t.Helper()
	entries, err := os.ReadDir("/sys/block")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range entries {
		size, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "size"))
		if err == nil && strings.TrimSpace(string(size)) != "0" {
			out[e.Name()] = true
		}
	}
	return out
}

func TestGetDisksOfThisMachine(t *testing.T) {
	fs := mountTestFS(t)
	tp := newTestPlugin(t, nil)
	before := nonEmptyBlockDevices(t)
	var disks []struct {
		Name         string       `json:"name"`
		Partition    bool         `json:"partition"`
		Dependencies *[]string    `json:"dependencies"`
		Address      *diskAddress `json:"address"`
	}
	tp.ok("guest-get-disks", "", &disks)
	after := nonEmptyBlockDevices(t)
	byName := map[string]int{}
	for i, d := range disks {
		byName[d.Name] = i
	}
	// Every non-empty block device of /sys/block is there (those other
	// tests attach or detach meanwhile aside).
	for name := range before {
		if !after[name] {
			continue
		}
		i, ok := byName["/dev/"+name]
		if !ok {
			t.Errorf("/dev/%s missing from %+v", name, disks)
			continue
		}
		d := disks[i]
		if d.Partition || d.Dependencies == nil {
			t.Errorf("%s: %+v", d.Name, d)
		}
		real, _ := filepath.EvalSymlinks(filepath.Join("/sys/block", name))
		if strings.Contains(real, "/devices/virtual/") && d.Address != nil {
			t.Errorf("%s is virtual but has an address %+v", d.Name, d.Address)
		}
		if d.Address != nil && !busTypes[d.Address.BusType] {
			t.Errorf("%s: bus-type %q", d.Name, d.Address.BusType)
		}
	}
	loop, _ := os.Readlink(fmt.Sprintf("/sys/dev/block/%d:%d", fs.major, fs.minor))
	if _, ok := byName["/dev/"+filepath.Base(loop)]; !ok {
		t.Errorf("the test's loop device %s is not listed", filepath.Base(loop))
	}
}

// fakeSys builds a sysfs stand-in with real-looking device paths:
//   - sda on AHCI port ata2 (ports ata1, ata2) with partitions sda1, sda2
//   - sdb on virtio-scsi, target 0:1, lun 3
//   - nvme0n1 behind a PCI bridge
//   - vda on virtio-blk with a udev serial
//   - dm-0, a virtual device on sda2, named vg-root
//   - loop0 of size 0 (skipped)
func fakeSys(t *testing.T) (sys, root string) {
	sys = t.TempDir()
	root = t.TempDir()
	dev := func(path, name, majmin string) string {
		d := filepath.Join(sys, path)
		writeFile(t, filepath.Join(d, "uevent"), "MAJOR=x\nDEVNAME="+name+"\nDEVTYPE=disk\n", 0o644)
		writeFile(t, filepath.Join(d, "size"), "2048\n", 0o644)
		writeFile(t, filepath.Join(d, "dev"), majmin+"\n", 0o644)
		if err := os.MkdirAll(filepath.Join(d, "slaves"), 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	driver := func(pciPath, name string) {
		drv := filepath.Join(sys, "bus", "pci", "drivers", name)
		if err := os.MkdirAll(drv, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(drv, filepath.Join(sys, pciPath, "driver")); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, at string) {
		if err := os.MkdirAll(filepath.Dir(at), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, at); err != nil {
			t.Fatal(err)
		}
	}
	ahci := "devices/pci0000:00/0000:00:1f.2"
	sda := dev(ahci+"/ata2/host1/target1:0:0/1:0:0:0/block/sda", "sda", "8:0")
	if err := os.MkdirAll(filepath.Join(sys, ahci, "ata1"), 0o755); err != nil {
		t.Fatal(err)
	}
	driver(ahci, "ahci")
	sda1 := dev(ahci+"/ata2/host1/target1:0:0/1:0:0:0/block/sda/sda1", "sda1", "8:1")
	dev(ahci+"/ata2/host1/target1:0:0/1:0:0:0/block/sda/sda2", "sda2", "8:2")
	_ = sda1
	vscsi := "devices/pci0000:00/0000:00:03.0"
	sdb := dev(vscsi+"/virtio2/host2/target2:0:1/2:0:1:3/block/sdb", "sdb", "8:16")
	driver(vscsi, "virtio-pci")
	bridge := "devices/pci0000:00/0000:00:1c.0"
	nvme := dev(bridge+"/0000:01:00.0/nvme/nvme0/nvme0n1", "nvme0n1", "259:0")
	driver(bridge, "pcieport")
	driver(bridge+"/0000:01:00.0", "nvme")
	vblk := "devices/pci0000:00/0000:00:05.0"
	vda := dev(vblk+"/virtio4/block/vda", "vda", "253:0")
	driver(vblk, "virtio-pci")
	writeFile(t, filepath.Join(root, "run", "udev", "data", "b253:0"), "S:disk/by-id/virtio-SER123\nE:ID_SERIAL=SER123\n", 0o644)
	dm := dev("devices/virtual/block/dm-0", "dm-0", "254:0")
	writeFile(t, filepath.Join(dm, "dm", "name"), "vg-root\n", 0o644)
	link(filepath.Join(sda, "sda2"), filepath.Join(dm, "slaves", "sda2"))
	loop := dev("devices/virtual/block/loop0", "loop0", "7:0")
	writeFile(t, filepath.Join(loop, "size"), "0\n", 0o644)

	for name, d := range map[string]string{"sda": sda, "sdb": sdb, "nvme0n1": nvme, "vda": vda, "dm-0": dm, "loop0": loop} {
		link(d, filepath.Join(sys, "block", name))
		link(d, filepath.Join(sys, "dev", "block", strings.TrimSpace(readFileString(t, filepath.Join(d, "dev")))))
	}
	link(filepath.Join(sda, "sda2"), filepath.Join(sys, "dev", "block", "8:2"))
	return sys, root
}

func readFileString(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestDiskAddressesFromSysfs(t *testing.T) {
	sys, root := fakeSys(t)
	tp := newTestPlugin(t, map[string]any{"sys_root": sys, "root": root})
	addr := func(majmin string) fsDisks {
		t.Helper()
		var d fsDisks
		if err := tp.sys.forDevice(filepath.Join(sys, "dev", "block", majmin), &d, 0); err != nil {
			t.Fatal(err)
		}
		return d
	}
	check := func(majmin, name string, want diskAddress) {
		t.Helper()
		d := addr(majmin)
		if d.name != name || len(d.disks) != 1 {
			t.Fatalf("%s: %+v", majmin, d)
		}
		got := d.disks[0]
		if got.PCIController != want.PCIController || got.BusType != want.BusType || got.Bus != want.Bus ||
			got.Target != want.Target || got.Unit != want.Unit || got.Dev != want.Dev || got.Serial != want.Serial {
			t.Errorf("%s: %+v, want %+v", majmin, got, want)
		}
	}
	// AHCI: the unit is the port's position among the controller's ports.
	check("8:0", "sda", diskAddress{PCIController: pciAddress{0, 0, 0x1f, 2}, BusType: "sata", Unit: 1, Dev: "/dev/sda"})
	check("8:16", "sdb", diskAddress{PCIController: pciAddress{0, 0, 3, 0}, BusType: "scsi", Unit: 3, Dev: "/dev/sdb"})
	check("259:0", "nvme0n1", diskAddress{PCIController: pciAddress{0, 1, 0, 0}, BusType: "nvme", Dev: "/dev/nvme0n1"})
	check("253:0", "vda", diskAddress{PCIController: pciAddress{0, 0, 5, 0}, BusType: "virtio", Dev: "/dev/vda", Serial: "SER123"})
	// The partition of a disk is real hardware too.
	check("8:2", "sda2", diskAddress{PCIController: pciAddress{0, 0, 0x1f, 2}, BusType: "sata", Unit: 1, Dev: "/dev/sda2"})
	// A device-mapper volume is described by the disks beneath it.
	if d := addr("254:0"); d.name != "dm-0" || len(d.disks) != 1 || d.disks[0].Dev != "/dev/sda2" {
		t.Errorf("dm-0: %+v", d)
	}
	// Unknown device: named after its major:minor, no disks.
	if d := addr("9:9"); d.name != "9:9" || len(d.disks) != 0 {
		t.Errorf("missing device: %+v", d)
	}
}

func TestGetDisksFromSysfs(t *testing.T) {
	sys, root := fakeSys(t)
	tp := newTestPlugin(t, map[string]any{"sys_root": sys, "root": root})
	var disks []map[string]any
	tp.ok("guest-get-disks", "", &disks)
	got := map[string]map[string]any{}
	for _, d := range disks {
		got[d["name"].(string)] = d
	}
	if len(disks) != 7 {
		t.Fatalf("disks %v", disks)
	}
	for _, name := range []string{"/dev/sda", "/dev/sda1", "/dev/sda2", "/dev/sdb", "/dev/nvme0n1", "/dev/vda", "/dev/dm-0"} {
		if got[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
	if got["/dev/loop0"] != nil {
		t.Error("the empty loop0 is listed")
	}
	deps := func(name string) string { return fmt.Sprint(got[name]["dependencies"]) }
	if got["/dev/sda1"]["partition"] != true || deps("/dev/sda1") != "[/dev/sda]" {
		t.Errorf("sda1: %v", got["/dev/sda1"])
	}
	if got["/dev/sda"]["partition"] != false || deps("/dev/sda") != "[]" {
		t.Errorf("sda: %v", got["/dev/sda"])
	}
	if got["/dev/dm-0"]["alias"] != "vg-root" || deps("/dev/dm-0") != "[/dev/sda2]" || got["/dev/dm-0"]["address"] != nil {
		t.Errorf("dm-0: %v", got["/dev/dm-0"])
	}
	if a, ok := got["/dev/vda"]["address"].(map[string]any); !ok || a["bus-type"] != "virtio" || a["serial"] != "SER123" {
		t.Errorf("vda: %v", got["/dev/vda"])
	}
	// qemu-ga prepends: a disk's partitions come right before it.
	idx := map[string]int{}
	for i, d := range disks {
		idx[d["name"].(string)] = i
	}
	if !(idx["/dev/sda1"] < idx["/dev/sda"] && idx["/dev/sda2"] < idx["/dev/sda"]) || idx["/dev/sda"]-idx["/dev/sda1"] > 2 {
		t.Errorf("order: %v", idx)
	}
}

func TestGetFSInfoFromSysfs(t *testing.T) {
	sys, root := fakeSys(t)
	mnt := t.TempDir() // a real directory, so statfs answers
	proc := fakeProc(t, "40 1 254:0 / "+mnt+" rw - ext4 /dev/mapper/vg-root rw")
	tp := newTestPlugin(t, map[string]any{"sys_root": sys, "root": root, "proc_root": proc})
	var list []fsInfoJSON
	tp.ok("guest-get-fsinfo", "", &list)
	if len(list) != 1 {
		t.Fatalf("fsinfo %+v", list)
	}
	fi := list[0]
	if fi.Name != "dm-0" || fi.Mountpoint != mnt || fi.Type != "ext4" || len(fi.Disk) != 1 || fi.Disk[0].BusType != "sata" {
		t.Errorf("fsinfo %+v", fi)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if fi.TotalBytesPrivileged == nil || *fi.TotalBytesPrivileged != st.Blocks*uint64(st.Frsize) {
		t.Errorf("total-bytes-privileged %v, statfs %d", fi.TotalBytesPrivileged, st.Blocks*uint64(st.Frsize))
	}
}

func TestScanf(t *testing.T) {
	v, n, ok := scanf("0000:00/0000:00:1f.2/ata1", "%*x:%*x/%x:%x:%x.%x")
	if !ok || n != 20 || fmt.Sprint(v) != "[0 0 31 2]" {
		t.Fatalf("scanf: %v %d %v", v, n, ok)
	}
	if _, _, ok := scanf("0000:00/zz", "%*x:%*x/%x"); ok {
		t.Fatal("matched a non-number")
	}
	if v, _, ok := scanf("2:0:1/2:0:1:3/block", "%*u:%*u:%*u/%*u:%u:%u:%u"); !ok || fmt.Sprint(v) != "[0 1 3]" {
		t.Fatalf("target: %v", v)
	}
}
