package machine

import (
	"runtime"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
)

func TestDescribe(t *testing.T) {
	t.Parallel()
	root := fstest.MapFS{
		"proc/cpuinfo":                       {Data: []byte("processor\t: 0\nmodel name\t: QEMU Virtual CPU\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU\n")},
		"proc/meminfo":                       {Data: []byte("MemTotal:        1014380 kB\nMemFree: 1 kB\n")},
		"sys/firmware/devicetree/base/model": {Data: []byte("Raspberry Pi 4 Model B\x00")},
		"sys/block/vda/size":                 {Data: []byte("2048\n")},
		"sys/block/sda/size":                 {Data: []byte("4096\n")},
		"sys/block/sda/device/model":         {Data: []byte("QEMU HARDDISK   \n")},
		"sys/block/nbd0/size":                {Data: []byte("0\n")},
		"sys/block/loop0/size":               {Data: []byte("0\n")},
		"sys/class/net/lo/address":           {Data: []byte("00:00:00:00:00:00\n")},
		"sys/class/net/eth0/address":         {Data: []byte("52:54:00:7b:00:01\n")},
	}
	want := Facts{
		Arch: runtime.GOARCH, CPUs: 2, CPUModel: "QEMU Virtual CPU", MemoryBytes: 1014380 * 1024,
		Model: "Raspberry Pi 4 Model B",
		Disks: []Disk{{Name: "sda", Bytes: 4096 * 512, Model: "QEMU HARDDISK"}, {Name: "vda", Bytes: 2048 * 512}},
		NICs:  []NIC{{Name: "eth0", MAC: "52:54:00:7b:00:01"}},
	}
	if diff := cmp.Diff(want, Describe(root)); diff != "" {
		t.Errorf("Describe (-want +got):\n%s", diff)
	}
}
