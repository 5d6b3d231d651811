// Package cmdline parses the rackboot.* parameters of the kernel command
// line that rackboot's boot configs pass to the initramfs (lab.cmdline).
//
// # Parameters
//
//	rackboot.server=ADDR        appliance address (required)
//	rackboot.http=URL           appliance HTTP base, for reports (required)
//	rackboot.token=TOKEN        this boot's token (required)
//	rackboot.board=NAME         board name (required to boot)
//	rackboot.nbd=nbd://ADDR:PORT/EXPORT  root export (required to boot)
//	rackboot.disk=SELECTOR      build disk; "none" or absent for none
//	rackboot.disk_optional=1    boot on without a build disk if none matches
//	rackboot.mode=boot|identify identify: report the machine and power off
//	rackboot.init=PATH          init of the root (default /sbin/init)
//	rackboot.fail_delay=DUR     wait before rebooting on failure (default 30s)
//	rackboot.modules=a,b        extra modules to load
//	rackboot.debug=shell        on failure, start a shell instead of rebooting
//	BOOTIF=01-aa-bb-cc-dd-ee-ff boot interface (PXELINUX IPAPPEND 2, iPXE)
//
// Other parameters are the kernel's and are ignored; unknown rackboot.*
// names are collected so the init can warn about them.
package cmdline
