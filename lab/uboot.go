package lab

// ubootScriptText is the U-Boot script served as boot.scr.uimg: it hands
// over to U-Boot's own PXELINUX-format config flow, which then asks for
// pxelinux.cfg/01-<mac> and its fallbacks.
const ubootScriptText = "echo rackboot: fetching the boot config\npxe get && pxe boot\n"

// ubootScript is replaced by the uboot package's image builder.
func ubootScript() []byte { return []byte(ubootScriptText) }
