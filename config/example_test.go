package config_test

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/rackboot/rackboot/config"
)

func ExampleParse() {
	data := []byte(`
state_dir: state
nbd:
  drain_timeout: 10s
images:
  - name: minimal
    path: images/minimal.img
`)
	c, err := config.Parse("rackboot.yaml", data, "/etc/rackboot")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.StateDir, c.Level())
	fmt.Println(c.NBD.Listen, c.NBD.DrainTimeout, c.NBD.MaxConnections)
	for _, img := range c.Images {
		fmt.Println(img.Name, img.Path)
	}
	// Output:
	// /etc/rackboot/state INFO
	// :10809 10s 1024
	// minimal /etc/rackboot/images/minimal.img
}

func ExampleParse_errors() {
	data := []byte(`state_dir: /var/lib/rackboot
nbd:
  lisen: ":10809"
  max_connections: many
images:
  - name: minimal
    path: a.img
  - name: minimal
    path: b.img
`)
	_, err := config.Parse("rackboot.yaml", data, "/etc/rackboot")
	fmt.Println(err)
	// Output:
	// rackboot.yaml:3: nbd.lisen: unknown field (known: listen, drain_timeout, max_connections, max_connections_per_peer)
	// rackboot.yaml:4: nbd.max_connections: want an integer, got string "many"
	// rackboot.yaml:8: images[1].name: duplicate image name "minimal" (first at line 6)
}

func ExampleLoad() {
	c, err := config.Load("testdata/rackboot.yaml")
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, img := range c.Images {
		fmt.Println(img.Name)
	}

	_, err = config.Load("testdata/missing.yaml")
	fmt.Println(err)
	fmt.Println(errors.Is(err, fs.ErrNotExist))
	// Output:
	// minimal
	// debian-12
	// testdata/missing.yaml: open: no such file or directory
	// true
}
