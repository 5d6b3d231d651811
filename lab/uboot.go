package lab

import (
	"time"

	"github.com/rackboot/rackboot/uboot"
)

// ubootScriptText is the U-Boot script served as boot.scr.uimg: it hands
// over to U-Boot's own PXELINUX-format config flow, which then asks for
// pxelinux.cfg/01-<mac> and its fallbacks.
const ubootScriptText = "echo rackboot: fetching the boot config\npxe get && pxe boot\n"

// ubootScript is the script as a U-Boot legacy image, with a fixed
// timestamp so that it is the same bytes every time.
func ubootScript() []byte { return uboot.Script("rackboot", ubootScriptText, time.Unix(0, 0)) }
