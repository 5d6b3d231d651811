// Package config loads rackboot's configuration file.
//
// The configuration is one YAML file, read once at startup by [Load] and
// then passed down explicitly. There is no global configuration.
//
// # Example
//
// Only state_dir is required. The values shown for log_level, nbd, tftp and
// http are the defaults.
//
//	# Directory for per-session write layers and other state. Required.
//	# Relative paths here and below are resolved against this file's directory.
//	state_dir: /var/lib/rackboot
//
//	# debug, info, warn or error.
//	log_level: info
//
//	nbd:
//	  # host:port to serve NBD on; the port must be numeric.
//	  listen: ":10809"
//	  # How long shutdown waits for in-flight requests (Go duration).
//	  drain_timeout: 30s
//	  # Maximum number of concurrent NBD connections.
//	  max_connections: 1024
//	  # ... and from one address (one board); 0 means no limit.
//	  max_connections_per_peer: 16
//
//	# Read-only base images. A board boots the NBD export NAME@SESSION and its
//	# writes go to a layer in state_dir, so names cannot contain '@'.
//	images:
//	  - name: minimal
//	    path: images/minimal.img
//	  - name: debian-12
//	    path: /srv/rackboot/debian-12.img
//
//	# The appliance's address as boards reach it. Default: the first address
//	# of the first DHCP interface.
//	address: 10.0.0.1
//
//	dhcp:
//	  # full (addresses and boot info), proxy (boot info only, beside the
//	  # site's own DHCP server) or off.
//	  mode: full
//	  interfaces: [eth1]
//	  range_start: 10.0.0.100
//	  range_end: 10.0.0.199
//	  router: 10.0.0.1
//	  dns: [10.0.0.1]
//	  lease_time: 1h
//	  # Wait this long for a host answering ARP for a pool address before
//	  # offering it (0: offer unchecked).
//	  conflict_check: 250ms
//
//	tftp:
//	  listen: ":69"
//	http:
//	  listen: ":8080"
//
//	boot:
//	  # Bootloaders, kernels and initramfs images, served over TFTP and HTTP.
//	  tree: /var/lib/rackboot/boot
//	  kernels:
//	    amd64: {kernel: amd64/vmlinuz, initrd: amd64/initramfs.cpio.gz}
//	    arm64: {kernel: arm64/vmlinuz, initrd: arm64/initramfs.cpio.gz}
//	  # What machines outside the inventory get: ignore or identify.
//	  unknown_boards: ignore
//
//	# The inventory. A board boots its image with a fresh write layer each boot.
//	boards:
//	  - name: panda-01
//	    mac: 52:54:00:00:01:01
//	    arch: amd64
//	    ip: 10.0.0.11
//	    image: minimal
//	    build_disk: largest
//	  - name: rock-07
//	    mac: 52:54:00:00:02:07
//	    arch: arm64
//	    image: debian-12
//	    cmdline: loglevel=7
//
// # Strict decoding
//
// The file must hold at most one YAML document. Unknown keys, duplicate keys,
// values of the wrong kind (a list where a mapping is expected, a quoted
// "10" where an integer is expected) and YAML aliases (*name) are errors.
// A key with a null value ("log_level:" or "log_level: ~") keeps its
// default. Durations are Go durations such as "30s" or "1m30s".
//
// # Errors
//
// [Load] and [Parse] report every problem in the file at once, joined with
// [errors.Join] and sorted by line. Each names the file, the line and the
// field:
//
//	rackboot.yaml:3: nbd.lisen: unknown field (known: listen, drain_timeout, max_connections, max_connections_per_peer)
//	rackboot.yaml:7: nbd.listen: invalid host:port "foo:bar": port must be a number from 0 to 65535
//	rackboot.yaml:12: images[1].name: duplicate image name "minimal" (first at line 9)
//
// A required field that is missing is reported at the line of the enclosing
// list item, or without a line at the top level. YAML syntax errors carry
// the line reported by the YAML parser, which can be the line before the
// actual mistake.
//
// # File system
//
// Load reads only the config file, and Parse touches no files: image files
// and the state directory need not exist when the config is loaded.
// [Config.CheckFiles] checks the image files.
package config
